/* hugetlb memory: a private and a shared MAP_HUGETLB mapping, a hugetlb
 * memfd (MFD_HUGETLB) with a shared mapping, a SysV segment made with
 * SHM_HUGETLB, and (given a hugetlbfs mount as second argument, "-" for
 * none) a shared and a private mapping of files there, each partly
 * written. A third argument "nosysv" leaves the segment out (a migration
 * between simulated hosts that share one IPC namespace). After the
 * restore every area is still hugetlb with 2 MiB pages, holds what was
 * written (and zeros where nothing was), and the shared ones are still
 * shared (the memfd and its mapping see each other's writes). The harness
 * reserves the huge pages (/proc/sys/vm/nr_hugepages). */
#include "harness.h"
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/vfs.h>

#define HP (2UL << 20)

/* KernelPageSize of the smaps VMA holding addr, in kB (0: not found). */
static long kernel_page_kb(void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    int in = 0;
    long kb = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
            in = (uintptr_t)addr >= a && (uintptr_t)addr < b;
            continue;
        }
        if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1) break;
    }
    fclose(f);
    return in ? kb : 0;
}

static int zero(const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i]) return 0;
    return 1;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    /* Private: two huge pages, only the first written. */
    char *priv = mmap(NULL, 2 * HP, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    CHECK(priv != MAP_FAILED, "mmap(MAP_PRIVATE|MAP_HUGETLB): %s (no huge pages reserved?)", strerror(errno));
    fill(priv, HP, 1);
    /* Shared anonymous: one huge page. */
    char *shared = mmap(NULL, HP, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    CHECK(shared != MAP_FAILED, "mmap(MAP_SHARED|MAP_HUGETLB): %s", strerror(errno));
    fill(shared, HP, 2);
    /* A hugetlb memfd of two huge pages, the first written through a
     * shared mapping of both. */
    int fd = memfd_create("godwit-huge", MFD_HUGETLB);
    CHECK(fd >= 0, "memfd_create(MFD_HUGETLB): %s", strerror(errno));
    CHECK(ftruncate(fd, 2 * HP) == 0, "ftruncate: %s", strerror(errno));
    char *mfd = mmap(NULL, 2 * HP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(mfd != MAP_FAILED, "mmap(memfd): %s", strerror(errno));
    fill(mfd, HP, 3);
    /* Read-only after the writes: the protection must come back too. */
    CHECK(mprotect(shared, HP, PROT_READ) == 0, "mprotect: %s", strerror(errno));
    /* SysV, marked for removal (it goes with us). */
    int sysv = !(argc > 3 && strcmp(argv[3], "nosysv") == 0);
    int shmid = -1;
    char *seg = NULL;
    if (sysv) {
        shmid = shmget(IPC_PRIVATE, HP, IPC_CREAT | SHM_HUGETLB | 0600);
        CHECK(shmid >= 0, "shmget(SHM_HUGETLB): %s", strerror(errno));
        seg = shmat(shmid, NULL, 0);
        CHECK(seg != (void *)-1, "shmat: %s", strerror(errno));
        CHECK(shmctl(shmid, IPC_RMID, NULL) == 0, "IPC_RMID: %s", strerror(errno));
        fill(seg, HP, 4);
    }
    /* Files on a hugetlbfs mount: one mapped shared (written through the
     * mapping), one mapped private (its page written: a copy of ours). */
    char *fsh = NULL, *fpriv = NULL;
    const char *mnt = argc > 2 && strcmp(argv[2], "-") != 0 ? argv[2] : NULL;
    if (mnt) {
        char path[4200];
        snprintf(path, sizeof path, "%s/shared", mnt);
        int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        CHECK(f >= 0, "%s: %s", path, strerror(errno));
        CHECK(ftruncate(f, HP) == 0, "ftruncate %s: %s", path, strerror(errno));
        fsh = mmap(NULL, HP, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
        CHECK(fsh != MAP_FAILED, "mmap %s: %s", path, strerror(errno));
        close(f);
        fill(fsh, HP, 5);
        snprintf(path, sizeof path, "%s/private", mnt);
        f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        CHECK(f >= 0, "%s: %s", path, strerror(errno));
        CHECK(ftruncate(f, HP) == 0, "ftruncate %s: %s", path, strerror(errno));
        fpriv = mmap(NULL, HP, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
        CHECK(fpriv != MAP_FAILED, "mmap %s: %s", path, strerror(errno));
        close(f);
        fill(fpriv, HP, 6);
    }

    ready();
    wait_go();

    long i;
    CHECK((i = check_fill(priv, HP, 1)) < 0, "private hugetlb: word %ld differs", i);
    CHECK(zero(priv + HP, HP), "private hugetlb: the page never written is not zero");
    CHECK(kernel_page_kb(priv) == 2048, "private mapping: KernelPageSize %ld kB, not 2048", kernel_page_kb(priv));
    CHECK((i = check_fill(shared, HP, 2)) < 0, "shared hugetlb: word %ld differs", i);
    CHECK(kernel_page_kb(shared) == 2048, "shared mapping: KernelPageSize %ld kB, not 2048", kernel_page_kb(shared));
    CHECK((i = check_fill(mfd, HP, 3)) < 0, "memfd mapping: word %ld differs", i);
    CHECK(zero(mfd + HP, HP), "memfd: the page never written is not zero");
    CHECK(kernel_page_kb(mfd) == 2048, "memfd mapping: KernelPageSize %ld kB, not 2048", kernel_page_kb(mfd));

    struct statfs sfs;
    CHECK(fstatfs(fd, &sfs) == 0, "fstatfs(memfd): %s", strerror(errno));
    CHECK(sfs.f_type == HUGETLBFS_MAGIC, "the memfd is no longer on hugetlbfs (f_type %#lx)", (unsigned long)sfs.f_type);
    CHECK(sfs.f_bsize == (long)HP, "the memfd's page size is %ld, not 2 MiB", (long)sfs.f_bsize);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == (off_t)(2 * HP), "the memfd's size changed");
    /* The memfd and the old mapping are one object still. */
    char *again = mmap(NULL, 2 * HP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(again != MAP_FAILED, "mmap(memfd) after restore: %s", strerror(errno));
    CHECK((i = check_fill(again, HP, 3)) < 0, "the memfd's contents: word %ld differs", i);
    again[HP + 5] = 42;
    CHECK(mfd[HP + 5] == 42, "the memfd and its mapping are no longer shared");
    if (sysv) {
        CHECK((i = check_fill(seg, HP, 4)) < 0, "SysV hugetlb segment: word %ld differs", i);
        CHECK(kernel_page_kb(seg) == 2048, "SysV attach: KernelPageSize %ld kB, not 2048", kernel_page_kb(seg));
        struct shmid_ds ds;
        CHECK(shmctl(shmid, IPC_STAT, &ds) == 0, "IPC_STAT of shmid %d: %s", shmid, strerror(errno));
        CHECK(ds.shm_segsz == HP && (ds.shm_perm.mode & SHM_DEST), "SysV segment: size %zu, mode %#o", ds.shm_segsz, ds.shm_perm.mode);
    }
    if (mnt) {
        CHECK((i = check_fill(fsh, HP, 5)) < 0, "shared hugetlbfs file mapping: word %ld differs", i);
        CHECK(kernel_page_kb(fsh) == 2048, "hugetlbfs file: KernelPageSize %ld kB", kernel_page_kb(fsh));
        CHECK((i = check_fill(fpriv, HP, 6)) < 0, "private hugetlbfs file mapping: word %ld differs", i);
        CHECK(kernel_page_kb(fpriv) == 2048, "private hugetlbfs file: KernelPageSize %ld kB", kernel_page_kb(fpriv));
        /* Private still: the file itself holds zeros. */
        char path[4200];
        snprintf(path, sizeof path, "%s/private", mnt);
        int f = open(path, O_RDONLY | O_CLOEXEC);
        CHECK(f >= 0, "%s: %s", path, strerror(errno));
        char *file = mmap(NULL, HP, PROT_READ, MAP_SHARED, f, 0);
        CHECK(file != MAP_FAILED, "mmap %s: %s", path, strerror(errno));
        CHECK(zero(file, HP), "the private mapping's writes reached the file");
        fpriv[7] ^= 1;
        CHECK(file[7] == 0, "the private mapping is shared with the file");
    }
    /* Read-only still. */
    CHECK(mprotect(shared, HP, PROT_READ | PROT_WRITE) == 0, "mprotect back: %s", strerror(errno));
    pass();
}
