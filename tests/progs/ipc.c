/* SysV shared memory, memfds and a FIFO, shared by a parent and a child.
 *
 * SysV: segment A (a key, mode 0640, 3 pages + 100 bytes, pages 1-2 never
 * touched) attached read-write by the parent and inherited by the child,
 * which also attaches it SHM_RDONLY; segment B (IPC_PRIVATE) attached by
 * both and marked for removal (IPC_RMID).
 * memfds: "godwit-ipc-memfd" (sealing allowed, F_SEAL_SHRINK|F_SEAL_GROW,
 * 8 pages with a hole, offset 1234, close-on-exec) mapped shared by both,
 * its fd kept by both (one description) and reopened read-only by the
 * child (a second description); "godwit-ipc-sealed" with F_SEAL_WRITE and
 * F_SEAL_SEAL, mapped read-only; "godwit-ipc-future" with
 * F_SEAL_FUTURE_WRITE on top of a writable mapping; "godwit-ipc-maponly",
 * whose fd was closed after mapping it.
 * FIFO: DIR/fifo, read end (non-blocking) in the parent, write end in the
 * child, 19 unread bytes in it.
 *
 * After restore the parent checks ids, keys, modes, attach counts, data,
 * seals and their enforcement, names, offsets and sharing; the child checks
 * its own view and writes through each shared object and the FIFO. */
#include "harness.h"
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define PG 4096
#define A_SIZE (3 * PG + 100)
#define B_SIZE (2 * PG)
#define M_SIZE (8 * PG)
#define FIFO_DATA "unread fifo bytes!\n"

/* Words in segment B the parent and the child talk through. */
enum { CMD = 0, ACK = 1 };

static const char *memfd_name = "godwit-ipc-memfd";

static void link_of(int fd, char *out, size_t n) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    ssize_t r = readlink(p, out, n - 1);
    out[r < 0 ? 0 : r] = 0;
}

/* The inode and name /proc/self/maps shows for the mapping at `addr`. */
static unsigned long map_inode(void *addr, char *name, size_t n) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long ino = 0;
    name[0] = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long s, e, off, i;
        char perms[8], dev[16];
        int pos = 0;
        if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &s, &e, perms, &off, dev, &i, &pos) >= 6 &&
            (unsigned long)addr >= s && (unsigned long)addr < e) {
            ino = i;
            snprintf(name, n, "%s", line + pos);
            name[strcspn(name, "\n")] = 0;
        }
    }
    if (f) fclose(f);
    return ino;
}

static int check_a(const unsigned char *a) {
    if (check_fill(a, PG, 11) >= 0) return 1;
    for (int i = PG; i < 3 * PG; i++) if (a[i]) return 2;
    if (memcmp(a + 3 * PG, "end of segment A", 17) != 0) return 3;
    return 0;
}

static int check_memfd_map(const unsigned char *m) {
    if (check_fill(m, 3 * PG, 21) >= 0) return 1;
    for (int i = 3 * PG; i < 5 * PG; i++) if (m[i]) return 2;
    if (check_fill(m + 7 * PG, PG, 22) >= 0) return 3;
    return 0;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    key_t key = 0x60d00000 | (getpid() & 0xffff);
    int ida = shmget(key, A_SIZE, IPC_CREAT | IPC_EXCL | 0640);
    CHECK(ida >= 0, "shmget A: %s", strerror(errno));
    unsigned char *a = shmat(ida, NULL, 0);
    CHECK(a != (void *)-1, "shmat A");
    fill(a, PG, 11);
    memcpy(a + 3 * PG, "end of segment A", 17);
    int idb = shmget(IPC_PRIVATE, B_SIZE, IPC_CREAT | 0600);
    CHECK(idb >= 0, "shmget B");
    volatile uint32_t *b = shmat(idb, NULL, 0);
    CHECK(b != (void *)-1, "shmat B");
    fill((void *)(b + 2), 1024, 12);
    CHECK(shmctl(idb, IPC_RMID, NULL) == 0, "IPC_RMID B");

    /* memfds */
    int mfd = memfd_create(memfd_name, MFD_ALLOW_SEALING | MFD_CLOEXEC);
    CHECK(mfd >= 0, "memfd_create");
    CHECK(ftruncate(mfd, M_SIZE) == 0, "ftruncate");
    unsigned char tmp[3 * PG];
    fill(tmp, sizeof tmp, 21);
    CHECK(pwrite(mfd, tmp, sizeof tmp, 0) == sizeof tmp, "pwrite memfd");
    fill(tmp, PG, 22);
    CHECK(pwrite(mfd, tmp, PG, 7 * PG) == PG, "pwrite memfd 2");
    CHECK(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0, "F_ADD_SEALS");
    unsigned char *m = mmap(NULL, M_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CHECK(m != MAP_FAILED, "mmap memfd");
    CHECK(lseek(mfd, 1234, SEEK_SET) == 1234, "lseek memfd");

    int sfd = memfd_create("godwit-ipc-sealed", MFD_ALLOW_SEALING);
    CHECK(sfd >= 0 && write(sfd, "sealed contents", 16) == 16, "sealed memfd");
    CHECK(fcntl(sfd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) == 0, "F_SEAL_WRITE");
    const char *sm = mmap(NULL, PG, PROT_READ, MAP_SHARED, sfd, 0);
    CHECK(sm != MAP_FAILED, "mmap sealed memfd");

    int ffd = memfd_create("godwit-ipc-future", MFD_ALLOW_SEALING);
    CHECK(ffd >= 0 && ftruncate(ffd, PG) == 0, "future memfd");
    char *fm = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
    CHECK(fm != MAP_FAILED, "mmap future memfd");
    strcpy(fm, "written before the seal");
    CHECK(fcntl(ffd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0, "F_SEAL_FUTURE_WRITE");

    int ofd = memfd_create("godwit-ipc-maponly", 0);
    CHECK(ofd >= 0 && ftruncate(ofd, PG) == 0, "map-only memfd");
    char *om = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, ofd, 0);
    CHECK(om != MAP_FAILED, "mmap map-only memfd");
    strcpy(om, "mapped only");
    close(ofd);

    /* FIFO */
    char fifo[4200];
    snprintf(fifo, sizeof fifo, "%s/fifo", test_dir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    int frd = open(fifo, O_RDONLY | O_NONBLOCK);
    int fwr = open(fifo, O_WRONLY);
    CHECK(frd >= 0 && fwr >= 0, "open fifo");
    CHECK(write(fwr, FIFO_DATA, strlen(FIFO_DATA)) == (ssize_t)strlen(FIFO_DATA), "write fifo");

    pid_t child = fork();
    if (child == 0) {
        close(frd);
        const unsigned char *ro = shmat(ida, NULL, SHM_RDONLY);
        if (ro == (void *)-1) _exit(10);
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", mfd);
        int again = open(self, O_RDONLY);
        if (again < 0) _exit(11);
        b[ACK] = 1;
        while (b[CMD] != 1) sleep_ms(5);
        /* After restore: the child's own view, then writes for the parent. */
        int err = 0;
        if (check_a(a)) err = 20 + check_a(a);
        else if (check_a(ro)) err = 30 + check_a(ro);
        else if (mprotect((void *)ro, PG, PROT_READ | PROT_WRITE) == 0 || errno != EACCES) err = 40;
        else if (check_fill((void *)(b + 2), 1024, 12) >= 0) err = 41;
        else if (check_memfd_map(m)) err = 50 + check_memfd_map(m);
        else if (lseek(again, 0, SEEK_CUR) != 0 || lseek(mfd, 0, SEEK_CUR) != 1234) err = 60;
        else {
            unsigned char buf[PG];
            struct stat s1, s2;
            if (pread(again, buf, PG, 7 * PG) != PG || check_fill(buf, PG, 22) >= 0) err = 61;
            else if (fstat(again, &s1) || fstat(mfd, &s2) || s1.st_ino != s2.st_ino) err = 62;
            else if ((fcntl(again, F_GETFL) & O_ACCMODE) != O_RDONLY) err = 63;
            else if (strcmp(sm, "sealed contents") != 0) err = 64;
            else if (strcmp(om, "mapped only") != 0) err = 65;
            else if (memcmp(m + 5 * PG, "through the mapping", 20) != 0) err = 66;
        }
        if (!err) {
            memcpy(a + 100, "child wrote A", 14);
            memcpy(m + 4 * PG, "child wrote the memfd", 22);
            strcpy(fm + 100, "child wrote future");
            strcpy(om + 100, "child wrote map-only");
            if (write(fwr, "ping", 4) != 4) err = 70;
        }
        b[ACK] = err ? (uint32_t)err : 2;
        while (b[CMD] != 3) sleep_ms(5);
        _exit(0);
    }
    while (b[ACK] != 1) sleep_ms(5);
    close(fwr);
    ready();
    wait_go();

    /* SysV: same ids, key, mode, attach counts, data. */
    struct shmid_ds ds;
    CHECK(shmctl(ida, IPC_STAT, &ds) == 0, "IPC_STAT A (shmid %d): %s", ida, strerror(errno));
    CHECK(ds.shm_perm.__key == key && (ds.shm_perm.mode & 0777) == 0640 && ds.shm_segsz == A_SIZE,
          "segment A: key %#x mode %o size %zu", ds.shm_perm.__key, ds.shm_perm.mode, (size_t)ds.shm_segsz);
    CHECK(!(ds.shm_perm.mode & SHM_DEST), "segment A is marked for removal");
    CHECK(ds.shm_nattch == 3, "segment A attached %lu times", (unsigned long)ds.shm_nattch);
    CHECK(shmget(key, 0, 0) == ida, "key %#x finds shmid %d, not %d", key, shmget(key, 0, 0), ida);
    CHECK(shmctl(idb, IPC_STAT, &ds) == 0, "IPC_STAT B (shmid %d): %s", idb, strerror(errno));
    CHECK((ds.shm_perm.mode & SHM_DEST) && ds.shm_perm.__key == IPC_PRIVATE && ds.shm_nattch == 2,
          "segment B: mode %o key %#x nattch %lu", ds.shm_perm.mode, ds.shm_perm.__key, (unsigned long)ds.shm_nattch);
    CHECK(check_a(a) == 0, "segment A contents (%d)", check_a(a));
    CHECK(check_fill((void *)(b + 2), 1024, 12) < 0, "segment B contents");
    char name[512];
    CHECK(map_inode(a, name, sizeof name) == (unsigned long)ida, "segment A mapping is not shmid %d: %s", ida, name);

    /* memfd: name, flags, offset, seals and their enforcement, one object. */
    char link[512];
    link_of(mfd, link, sizeof link);
    CHECK(strcmp(link, "/memfd:godwit-ipc-memfd (deleted)") == 0, "memfd link %s", link);
    CHECK(fcntl(mfd, F_GETFD) & FD_CLOEXEC, "memfd lost close-on-exec");
    CHECK((fcntl(mfd, F_GETFL) & O_ACCMODE) == O_RDWR, "memfd access mode");
    CHECK(lseek(mfd, 0, SEEK_CUR) == 1234, "memfd offset %ld", (long)lseek(mfd, 0, SEEK_CUR));
    CHECK(fcntl(mfd, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "memfd seals %#x", fcntl(mfd, F_GET_SEALS));
    CHECK(ftruncate(mfd, M_SIZE + PG) < 0 && errno == EPERM, "F_SEAL_GROW not enforced");
    CHECK(ftruncate(mfd, PG) < 0 && errno == EPERM, "F_SEAL_SHRINK not enforced");
    CHECK(fcntl(mfd, F_ADD_SEALS, F_SEAL_SEAL) == 0, "sealing is no longer allowed");
    struct stat st;
    CHECK(fstat(mfd, &st) == 0 && st.st_size == M_SIZE, "memfd size %ld", (long)st.st_size);
    CHECK(map_inode(m, name, sizeof name) == (unsigned long)st.st_ino,
          "the memfd mapping (%s) is not the memfd of the fd (inode %lu)", name, (unsigned long)st.st_ino);
    CHECK(strcmp(name, "/memfd:godwit-ipc-memfd (deleted)") == 0, "memfd mapping name %s", name);
    CHECK(check_memfd_map(m) == 0, "memfd mapping contents (%d)", check_memfd_map(m));
    memcpy(m + 5 * PG, "through the mapping", 20);
    char buf[64] = {0};
    CHECK(pread(mfd, buf, 20, 5 * PG) == 20 && strcmp(buf, "through the mapping") == 0, "mapping write not seen by the fd");
    CHECK(pwrite(mfd, "through the fd", 15, 6 * PG) == 15 && memcmp(m + 6 * PG, "through the fd", 15) == 0,
          "fd write not seen in the mapping");

    int sealed = -1, future = -1;
    for (int fd = 3; fd < 64; fd++) {
        link_of(fd, link, sizeof link);
        if (strcmp(link, "/memfd:godwit-ipc-sealed (deleted)") == 0) sealed = fd;
        if (strcmp(link, "/memfd:godwit-ipc-future (deleted)") == 0) future = fd;
    }
    CHECK(sealed == sfd && future == ffd, "sealed memfd fd %d (want %d), future %d (want %d)", sealed, sfd, future, ffd);
    CHECK(fcntl(sfd, F_GET_SEALS) == (F_SEAL_WRITE | F_SEAL_SEAL), "sealed memfd seals %#x", fcntl(sfd, F_GET_SEALS));
    CHECK(write(sfd, "x", 1) < 0 && errno == EPERM, "F_SEAL_WRITE not enforced");
    CHECK(strcmp(sm, "sealed contents") == 0, "sealed memfd mapping holds %.16s", sm);
    CHECK(mprotect((void *)sm, PG, PROT_READ | PROT_WRITE) < 0, "write-sealed mapping became writable");
    CHECK(fcntl(ffd, F_GET_SEALS) == F_SEAL_FUTURE_WRITE, "future memfd seals %#x", fcntl(ffd, F_GET_SEALS));
    CHECK(pwrite(ffd, "x", 1, 0) < 0 && errno == EPERM, "F_SEAL_FUTURE_WRITE not enforced");
    CHECK(strcmp(fm, "written before the seal") == 0, "future memfd mapping holds %s", fm);
    strcpy(fm + 200, "parent still writes");
    CHECK(pread(ffd, buf, 20, 200) == 20 && strcmp(buf, "parent still writes") == 0, "future memfd mapping not writable");
    CHECK(strcmp(om, "mapped only") == 0, "map-only memfd holds %s", om);
    map_inode(om, name, sizeof name);
    CHECK(strcmp(name, "/memfd:godwit-ipc-maponly (deleted)") == 0, "map-only memfd mapping name %s", name);

    /* FIFO: the unread bytes, exactly once. */
    memset(buf, 0, sizeof buf);
    ssize_t n = read(frd, buf, sizeof buf - 1);
    CHECK(n == (ssize_t)strlen(FIFO_DATA) && strcmp(buf, FIFO_DATA) == 0, "fifo gave %zd bytes: %s", n, buf);
    CHECK(read(frd, buf, sizeof buf) < 0 && errno == EAGAIN, "fifo data came back twice");
    CHECK((fcntl(frd, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK), "fifo read end flags %#x",
          fcntl(frd, F_GETFL));
    CHECK(stat(fifo, &st) == 0 && S_ISFIFO(st.st_mode), "the fifo file");

    /* The child's view, and its writes seen here. */
    b[CMD] = 1;
    for (int i = 0; i < 1000 && b[ACK] == 1; i++) sleep_ms(5);
    CHECK(b[ACK] == 2, "child reports %u", b[ACK]);
    CHECK(memcmp(a + 100, "child wrote A", 14) == 0, "segment A is not shared with the child");
    CHECK(memcmp(m + 4 * PG, "child wrote the memfd", 22) == 0, "memfd mapping is not shared with the child");
    CHECK(pread(mfd, buf, 22, 4 * PG) == 22 && memcmp(buf, "child wrote the memfd", 22) == 0, "child's write not seen by the fd");
    CHECK(strcmp(fm + 100, "child wrote future") == 0, "future memfd is not shared with the child");
    CHECK(strcmp(om + 100, "child wrote map-only") == 0, "map-only memfd is not shared with the child");
    for (int i = 0; i < 200; i++) {
        n = read(frd, buf, 4);
        if (n != -1 || errno != EAGAIN) break;
        sleep_ms(5);
    }
    CHECK(n == 4 && memcmp(buf, "ping", 4) == 0, "fifo from the child: %zd", n);
    b[CMD] = 3;
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    CHECK(read(frd, buf, 4) == 0, "fifo not at end of file once the writer is gone");
    CHECK(shmctl(ida, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1, "segment A nattch after the child");
    CHECK(shmctl(ida, IPC_RMID, NULL) == 0, "IPC_RMID A");
    pass();
}
