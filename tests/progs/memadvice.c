/* Memory advice and locks, one kind per area: MADV_DONTFORK, WIPEONFORK,
 * DONTDUMP, MERGEABLE, HUGEPAGE, NOHUGEPAGE, RANDOM, SEQUENTIAL, an
 * mlock'ed area and an mlock2(MLOCK_ONFAULT) one partly touched, each
 * holding data; then mlockall(MCL_FUTURE | MCL_ONFAULT), which only shows
 * in the mappings made after it. Before the dump and again after restore:
 * a fork child finds the DONTFORK area absent and the WIPEONFORK area
 * zeroed. After restore: every area has the VmFlags it had, its data, the
 * locked memory (VmLck) is the same, the locked area is all present and the
 * on-fault one holds only the pages that were touched, and a new mapping is
 * locked on fault. /proc files are read with read(2) into static buffers:
 * under MCL_FUTURE a malloc could map (and lock) more memory.
 * `memadvice DIR mergeany` also makes the whole process mergeable
 * (prctl PR_SET_MEMORY_MERGE: every area gets "mg") and then takes it back
 * from one area (MADV_UNMERGEABLE); after restore the process is still
 * mergeable as a whole, that area still is not. */
#include "harness.h"
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define PG 4096
#define AREA_PAGES 16
#define AREA (AREA_PAGES * PG)
#define MLOCK_ONFAULT_ 1
#define ONFAULT_TOUCHED 4
#define PR_SET_MEMORY_MERGE_ 67
#define PR_GET_MEMORY_MERGE_ 68

enum { DONTFORK, WIPEONFORK, DONTDUMP, MERGEABLE, LOCKED, LOCKONFAULT, HUGE, NOHUGE, RANDOM, SEQUENTIAL, N };
static const char *names[N] = { "dontfork", "wipeonfork", "dontdump", "mergeable", "locked", "lockonfault", "hugepage", "nohugepage", "random", "sequential" };
/* The flag each area must show in smaps. */
static const char *flags[N] = { "dc", "wf", "dd", "mg", "lo", "lf", "hg", "nh", "rr", "sr" };
static char *area[N];
static char vmflags[N][256];
static char buf[1 << 20];

static size_t slurp(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("open %s: %s", path, strerror(errno));
    size_t n = 0;
    ssize_t got;
    while (n < sizeof buf - 1 && (got = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)got;
    close(fd);
    buf[n] = 0;
    return n;
}

/* The VmFlags of the mapping starting at `addr`, into `out`. */
static void flags_of(void *addr, char *out, size_t len) {
    slurp("/proc/self/smaps");
    char head[32];
    snprintf(head, sizeof head, "%lx-", (unsigned long)addr);
    out[0] = 0;
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, head, strlen(head)) != 0 || (line != buf && line[-1] != '\n')) continue;
        char *f = strstr(line, "\nVmFlags:");
        if (!f) break;
        f += 9;
        while (*f == ' ') f++;
        size_t n = strcspn(f, "\n");
        if (n >= len) n = len - 1;
        memcpy(out, f, n);
        out[n] = 0;
        while (n > 0 && out[n - 1] == ' ') out[--n] = 0;
        return;
    }
}

static int has(const char *vmf, const char *flag) {
    for (const char *p = vmf; (p = strstr(p, flag)); p++)
        if ((p == vmf || p[-1] == ' ') && (p[2] == ' ' || p[2] == 0)) return 1;
    return 0;
}

static long vm_lck_kb(void) {
    slurp("/proc/self/status");
    char *p = strstr(buf, "\nVmLck:");
    return p ? strtol(p + 7, NULL, 10) : -1;
}

/* Pages of [p, p + len) resident. */
static int resident(const char *p, size_t len) {
    unsigned char vec[AREA_PAGES];
    if (mincore((void *)p, len, vec) != 0) fail("mincore: %s", strerror(errno));
    int n = 0;
    for (size_t i = 0; i < len / PG; i++) n += vec[i] & 1;
    return n;
}

/* A fork child: the DONTFORK area is not there, the WIPEONFORK one reads
 * zeros (the parent's still holds its data). */
static void fork_semantics(const char *when) {
    pid_t c = fork();
    if (c < 0) fail("%s: fork: %s", when, strerror(errno));
    if (c == 0) {
        unsigned char vec[1];
        if (mincore(area[DONTFORK], PG, vec) == 0 || errno != ENOMEM) _exit(10);
        for (size_t i = 0; i < AREA; i++) if (area[WIPEONFORK][i]) _exit(11);
        _exit(0);
    }
    int st;
    if (waitpid(c, &st, 0) != c) fail("%s: waitpid: %s", when, strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the fork child found %s (status %#x)", when,
          WIFEXITED(st) && WEXITSTATUS(st) == 10 ? "the MADV_DONTFORK area mapped" :
          WIFEXITED(st) && WEXITSTATUS(st) == 11 ? "data in the MADV_WIPEONFORK area" : "something wrong", st);
    long bad;
    CHECK((bad = check_fill(area[WIPEONFORK], AREA, 100 + WIPEONFORK)) < 0, "%s: the parent's wipe-on-fork area lost word %ld", when, bad);
}

/* A mapping made now is locked on fault (MCL_FUTURE | MCL_ONFAULT). */
static void future_locked(const char *when) {
    char f[256];
    char *p = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "%s: mmap", when);
    flags_of(p, f, sizeof f);
    CHECK(has(f, "lo") && has(f, "lf"), "%s: a new mapping is not locked on fault (mlockall(MCL_FUTURE | MCL_ONFAULT) lost): VmFlags %s", when, f);
    CHECK(resident(p, 4 * PG) == 0, "%s: a new mapping was populated (MCL_ONFAULT lost)", when);
    munmap(p, 4 * PG);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int merge_any = argc > 2 && strcmp(argv[2], "mergeany") == 0;
    for (int i = 0; i < N; i++) {
        area[i] = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(area[i] != MAP_FAILED, "mmap %s: %s", names[i], strerror(errno));
        if (i == LOCKONFAULT) fill(area[i], ONFAULT_TOUCHED * PG, 100 + i);
        else fill(area[i], AREA, 100 + i);
    }
    static const int advice[N] = { MADV_DONTFORK, MADV_WIPEONFORK, MADV_DONTDUMP, MADV_MERGEABLE, -1, -1, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_RANDOM, MADV_SEQUENTIAL };
    for (int i = 0; i < N; i++)
        if (advice[i] >= 0) CHECK(madvise(area[i], AREA, advice[i]) == 0, "madvise %s: %s", names[i], strerror(errno));
    CHECK(mlock(area[LOCKED], AREA) == 0, "mlock: %s", strerror(errno));
    CHECK(syscall(SYS_mlock2, area[LOCKONFAULT], AREA, MLOCK_ONFAULT_) == 0, "mlock2: %s", strerror(errno));
    fork_semantics("before the dump");
    if (merge_any) {
        CHECK(prctl(PR_SET_MEMORY_MERGE_, 1, 0, 0, 0) == 0, "PR_SET_MEMORY_MERGE: %s", strerror(errno));
        CHECK(madvise(area[DONTDUMP], AREA, MADV_UNMERGEABLE) == 0, "MADV_UNMERGEABLE: %s", strerror(errno));
    }
    CHECK(mlockall(MCL_FUTURE | MCL_ONFAULT) == 0, "mlockall: %s", strerror(errno));
    for (int i = 0; i < N; i++) {
        flags_of(area[i], vmflags[i], sizeof vmflags[i]);
        CHECK(has(vmflags[i], flags[i]), "%s area: no %s in VmFlags %s before the dump", names[i], flags[i], vmflags[i]);
    }
    long lck = vm_lck_kb();
    CHECK(lck == 2 * AREA / 1024, "VmLck %ld kB before the dump", lck);
    future_locked("before the dump");
    ready();
    wait_go();

    long now = vm_lck_kb();
    CHECK(now == lck, "VmLck: %ld kB after restore, %ld kB before", now, lck);
    char f[256];
    for (int i = 0; i < N; i++) {
        flags_of(area[i], f, sizeof f);
        CHECK(strcmp(f, vmflags[i]) == 0, "%s area: VmFlags \"%s\" after restore, \"%s\" before", names[i], f, vmflags[i]);
        long bad;
        size_t len = i == LOCKONFAULT ? ONFAULT_TOUCHED * PG : AREA;
        CHECK((bad = check_fill(area[i], len, 100 + i)) < 0, "%s area: word %ld lost", names[i], bad);
    }
    CHECK(resident(area[LOCKED], AREA) == AREA_PAGES, "the mlock'ed area is not all present");
    int r = resident(area[LOCKONFAULT], AREA);
    CHECK(r == ONFAULT_TOUCHED, "the lock-on-fault area has %d pages present, not %d", r, ONFAULT_TOUCHED);
    fork_semantics("after restore");
    future_locked("after restore");
    if (merge_any) {
        CHECK(prctl(PR_GET_MEMORY_MERGE_, 0, 0, 0, 0) == 1, "PR_SET_MEMORY_MERGE lost");
        CHECK(!has(vmflags[DONTDUMP], "mg") && has(vmflags[DONTFORK], "mg"), "merge-any flags before the dump: %s / %s", vmflags[DONTDUMP], vmflags[DONTFORK]);
    }
    pass();
}
