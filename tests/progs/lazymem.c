/* lazymem LOG MIB [churn|sparse]: a region of MIB MiB of private anonymous memory,
 * every page holding a pattern derived from its index and a version. In an
 * endless loop it checks every page against its version, then writes the
 * next version; after each whole pass it appends "pass N" to LOG. A page
 * that is wrong appends "BAD ..." and exits 3: for post-copy migration,
 * whose pages arrive after the process runs again.
 *
 * With "churn": as soon as it finds itself a new process (its start time in
 * /proc/self/stat changed: it was restored elsewhere), it at once, while
 * the rest of its memory may still be arriving:
 *   - releases the first eighth (MADV_DONTNEED) and replaces the second
 *     (munmap + mmap MAP_FIXED): both must read zeros from then on;
 *   - moves the third eighth elsewhere with mremap, checks it there, and
 *     moves it back;
 *   - forks a child that checks every page (zeros where released, and in
 *     the fourth eighth, marked MADV_WIPEONFORK for the fork) and exits;
 *   - waits 1 s (long enough for any pushed page to land), checks the first
 *     two eighths still read zeros, rewrites them, and appends "churned N".
 * With "sparse": each pass still checks every page but rewrites only one
 * page in 1024 (a process whose memory a pre-copy can catch up with). */
#include "harness.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL

/* The log's descriptor is a constant, not a variable: a process given wrong
 * memory (zeros for its globals) still reports it, as does a crash. */
#define LOGFD 100
static unsigned char *A;
static size_t npages;
static uint32_t *ver;

static void logline(const char *fmt, ...) {
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    if (n > 0 && write(LOGFD, b, (size_t)n) < 0) _exit(92);
}

/* Field 22 of /proc/self/stat: when this process was created (a restored
 * copy is a new process). */
static unsigned long long start_time(void) {
    char b[1024];
    int fd = open("/proc/self/stat", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n <= 0) return 0;
    b[n] = 0;
    char *p = strrchr(b, ')');
    unsigned long long v = 0;
    for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
    if (p) v = strtoull(p + 1, NULL, 10);
    return v;
}

static uint64_t seed_of(size_t i, uint32_t v) { return (uint64_t)i * 1000003ULL + v + 1; }

static void bad(const char *what, size_t page, long word) {
    uint64_t got = word >= 0 ? ((uint64_t *)(A + page * PG))[word] : 0;
    logline("BAD %s: page %zu word %ld is %#lx (version %u) pid %d\n", what, page, word,
            (unsigned long)got, ver[page], getpid());
    _exit(3);
}

static void check_page(size_t i, const char *what) {
    long w = check_fill(A + i * PG, PG, seed_of(i, ver[i]));
    if (w >= 0) bad(what, i, w);
}

static void write_page(size_t i) {
    ver[i]++;
    fill(A + i * PG, PG, seed_of(i, ver[i]));
}

static void check_zero(size_t from, size_t to, const char *what) {
    for (size_t i = from; i < to; i++) {
        const uint64_t *w = (const uint64_t *)(A + i * PG);
        for (size_t k = 0; k < PG / 8; k++)
            if (w[k] != 0) bad(what, i, (long)k);
    }
}

static void churn(unsigned long n) {
    size_t q = npages / 8;
    /* 1. released and replaced: zeros from now on. */
    if (madvise(A, q * PG, MADV_DONTNEED) != 0) { logline("BAD madvise: %s\n", strerror(errno)); _exit(3); }
    if (munmap(A + q * PG, q * PG) != 0) { logline("BAD munmap: %s\n", strerror(errno)); _exit(3); }
    if (mmap(A + q * PG, q * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != A + q * PG) {
        logline("BAD mmap: %s\n", strerror(errno)); _exit(3);
    }
    /* 2. moved away and back. */
    unsigned char *third = A + 2 * q * PG;
    unsigned char *away = mremap(third, q * PG, q * PG, MREMAP_MAYMOVE | MREMAP_FIXED, A + npages * PG + PG);
    if (away == MAP_FAILED) { logline("BAD mremap: %s\n", strerror(errno)); _exit(3); }
    for (size_t i = 0; i < q; i++) {
        long w = check_fill(away + i * PG, PG, seed_of(2 * q + i, ver[2 * q + i]));
        if (w >= 0) {
            logline("BAD moved page %zu word %ld\n", 2 * q + i, w);
            _exit(3);
        }
    }
    if (mremap(away, q * PG, q * PG, MREMAP_MAYMOVE | MREMAP_FIXED, third) != third) {
        logline("BAD mremap back: %s\n", strerror(errno)); _exit(3);
    }
    mmap(away, q * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    /* 3. a child sees the same memory, but zeros where MADV_WIPEONFORK. */
    if (madvise(A + 3 * q * PG, q * PG, MADV_WIPEONFORK) != 0) { logline("BAD wipeonfork: %s\n", strerror(errno)); _exit(3); }
    pid_t c = fork();
    if (c < 0) { logline("BAD fork: %s\n", strerror(errno)); _exit(3); }
    if (c == 0) {
        check_zero(0, 2 * q, "fork child, released");
        for (size_t i = 2 * q; i < 3 * q; i++) check_page(i, "fork child");
        check_zero(3 * q, 4 * q, "fork child, wiped on fork");
        for (size_t i = 4 * q; i < npages; i++) check_page(i, "fork child");
        _exit(0);
    }
    /* (left marked: the destination reads the mark just after the fork) */
    int st = 0;
    while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        logline("BAD fork child ended with status %#x\n", st);
        _exit(3);
    }
    /* 4. nothing lands in what was released. */
    sleep_ms(1000);
    check_zero(0, 2 * q, "released");
    for (size_t i = 0; i < 2 * q; i++) write_page(i);
    logline("churned %lu\n", n);
}

static void crashed(int sig) {
    static const char msg[] = "BAD crashed (signal)\n";
    (void)sig;
    if (write(LOGFD, msg, sizeof msg - 1) < 0) _exit(93);
    _exit(4);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: lazymem LOG MIB [churn|sparse]\n"); return 2; }
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0 || dup2(fd, LOGFD) != LOGFD) { perror(argv[1]); return 1; }
    close(fd);
    signal(SIGSEGV, crashed);
    signal(SIGBUS, crashed);
    npages = (size_t)atol(argv[2]) * 256;
    int churning = argc > 3 && !strcmp(argv[3], "churn");
    int sparse = argc > 3 && !strcmp(argv[3], "sparse");
    /* The region, and room after it (one guard page, then where a part of
     * it is moved to). */
    A = mmap(NULL, (2 * npages + 1) * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (A == MAP_FAILED) { perror("mmap"); return 1; }
    mprotect(A + npages * PG, (npages + 1) * PG, PROT_NONE);
    ver = calloc(npages, sizeof *ver);
    for (size_t i = 0; i < npages; i++) write_page(i);
    logline("ready\n");
    unsigned long churns = 0;
    unsigned long long born = start_time();
    for (unsigned long pass = 0;; pass++) {
        for (size_t i = 0; i < npages; i++) {
            if (churning && (i & 255) == 0 && start_time() != born) {
                born = start_time();
                churn(churns++);
            }
            check_page(i, "pass");
            if (!sparse || (i & 1023) == (pass & 1023)) write_page(i);
        }
        logline("pass %lu\n", pass);
    }
}
