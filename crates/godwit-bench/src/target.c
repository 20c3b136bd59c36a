/* Target process for godwit-bench.
 *
 *   target hold MIB READY RESULT   map MIB MiB of anonymous memory, write a
 *                                  pattern derived from the page index into
 *                                  every 8-byte word, report, then sleep.
 *                                  On SIGUSR1 check every word and write
 *                                  "OK" or "BAD ..." to RESULT.
 *   target tree N MIB READY        N processes (this one and N-1 children),
 *                                  each holding MIB MiB of dirty memory.
 *   target vmas N READY            N separate one-page mappings, each written,
 *                                  alternating protections so none merge.
 *   target sink MIB READY [thp]    map MIB MiB and never touch it (optionally
 *                                  with MADV_HUGEPAGE), report, then sleep.
 *   target writer MIB RATE READY RESULT STALLS
 *                                  hold MIB MiB like `hold`, then rewrite
 *                                  RATE MiB/s of it (page by page, round
 *                                  robin, each page a new generation), ticking
 *                                  every millisecond; the longest gap between
 *                                  two ticks (a stall: the process was stopped)
 *                                  is published to STALLS as "MAX_US TICKS"
 *                                  every 20 ms; SIGUSR2 resets it. SIGUSR1
 *                                  checks every page is whole (one generation)
 *                                  into RESULT.
 *
 * READY receives "ADDR LEN\n" (decimal) once the memory is ready; both files
 * are written to a temporary name first and renamed, so readers never see
 * half a file.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)

static uint64_t *mem;
static size_t npages;
static const char *result_path;
static char result_tmp[4096];

static inline uint64_t pattern(size_t page, size_t word) {
    /* Distinct in every page and every word, never zero. */
    return ((uint64_t)(page + 1) << 20 | (uint64_t)word << 1 | 1) * 0x9E3779B97F4A7C15ULL;
}

static int publish(const char *path, const char *tmp, const char *msg) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    size_t len = strlen(msg);
    ssize_t n = write(fd, msg, len);
    close(fd);
    if (n != (ssize_t)len)
        return -1;
    return rename(tmp, path);
}

/* Runs in the signal handler while the main thread sleeps in pause():
 * nothing else uses stdio or the heap at that time. */
static void on_usr1(int sig) {
    (void)sig;
    char msg[160];
    for (size_t p = 0; p < npages; p++) {
        const uint64_t *w = mem + p * WORDS;
        for (size_t j = 0; j < WORDS; j++) {
            if (w[j] != pattern(p, j)) {
                snprintf(msg, sizeof msg, "BAD page %zu word %zu: %#llx, expected %#llx\n", p, j,
                         (unsigned long long)w[j], (unsigned long long)pattern(p, j));
                publish(result_path, result_tmp, msg);
                return;
            }
        }
    }
    snprintf(msg, sizeof msg, "OK %zu pages\n", npages);
    publish(result_path, result_tmp, msg);
}

static void *dirty(size_t len) {
    uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); exit(1); }
    for (size_t p = 0; p < len / PAGE; p++)
        for (size_t j = 0; j < WORDS; j++) m[p * WORDS + j] = pattern(p, j);
    return m;
}

static int shapes(int argc, char **argv) {
    char ready[128], ready_tmp[4096];
    if (strcmp(argv[1], "tree") == 0 && argc >= 5) {
        int n = atoi(argv[2]);
        size_t len = strtoull(argv[3], NULL, 10) << 20;
        int p[2];
        if (pipe(p) != 0) return 1;
        for (int i = 1; i < n; i++) {
            if (fork() == 0) {
                dirty(len);
                if (write(p[1], "x", 1) != 1) _exit(1);
                for (;;) pause();
            }
        }
        void *m = dirty(len);
        for (int i = 1; i < n; i++) { char c; if (read(p[0], &c, 1) != 1) return 1; }
        snprintf(ready, sizeof ready, "%lu %zu\n", (unsigned long)(uintptr_t)m, len);
        snprintf(ready_tmp, sizeof ready_tmp, "%s.tmp", argv[4]);
        if (publish(argv[4], ready_tmp, ready) != 0) return 1;
    } else if (strcmp(argv[1], "vmas") == 0) {
        int n = atoi(argv[2]);
        for (int i = 0; i < n; i++) {
            char *m = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) { perror("mmap"); return 1; }
            memset(m, i & 0xff, PAGE);
            /* Neighbours with other protections never merge into one VMA. */
            if (i % 2) mprotect(m, PAGE, PROT_READ);
        }
        snprintf(ready, sizeof ready, "0 %d\n", n);
        snprintf(ready_tmp, sizeof ready_tmp, "%s.tmp", argv[3]);
        if (publish(argv[3], ready_tmp, ready) != 0) return 1;
    } else {
        return 2;
    }
    for (;;) pause();
}

/* writer mode: word 0 of each page is its generation, word j is
 * pattern(p, j) ^ generation. */
static volatile sig_atomic_t check_asked, reset_asked;
static void ask_check(int s) { (void)s; check_asked = 1; }
static void ask_reset(int s) { (void)s; reset_asked = 1; }

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void write_page(size_t p, uint64_t gen) {
    uint64_t *w = mem + p * WORDS;
    for (size_t j = 1; j < WORDS; j++) w[j] = pattern(p, j) ^ gen;
    w[0] = gen;
}

static void check_pages(void) {
    char msg[160];
    for (size_t p = 0; p < npages; p++) {
        const uint64_t *w = mem + p * WORDS;
        for (size_t j = 1; j < WORDS; j++) {
            if (w[j] != (pattern(p, j) ^ w[0])) {
                snprintf(msg, sizeof msg, "BAD page %zu word %zu: %#llx, generation %llu\n", p, j,
                         (unsigned long long)w[j], (unsigned long long)w[0]);
                publish(result_path, result_tmp, msg);
                return;
            }
        }
    }
    snprintf(msg, sizeof msg, "OK %zu pages\n", npages);
    publish(result_path, result_tmp, msg);
}

static int writer(char **argv) {
    size_t len = strtoull(argv[2], NULL, 10) << 20;
    double rate = strtod(argv[3], NULL); /* MiB/s */
    const char *ready_path = argv[4];
    result_path = argv[5];
    const char *stalls = argv[6];
    char stalls_tmp[4096];
    snprintf(result_tmp, sizeof result_tmp, "%s.tmp", result_path);
    snprintf(stalls_tmp, sizeof stalls_tmp, "%s.tmp", stalls);
    npages = len / PAGE;
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t p = 0; p < npages; p++) write_page(p, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = ask_check;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = ask_reset;
    sigaction(SIGUSR2, &sa, NULL);
    char ready[128], ready_tmp[4096];
    snprintf(ready, sizeof ready, "%lu %zu\n", (unsigned long)(uintptr_t)mem, len);
    snprintf(ready_tmp, sizeof ready_tmp, "%s.tmp", ready_path);
    if (publish(ready_path, ready_tmp, ready) != 0) { perror("ready file"); return 1; }
    double pages_per_us = rate * (1 << 20) / PAGE / 1e6;
    uint64_t start = now_us(), last = start, last_pub = start, max_gap = 0, ticks = 0;
    size_t next = 0;
    uint64_t gen = 1;
    for (;;) {
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
        uint64_t t = now_us();
        if (t - last > max_gap) max_gap = t - last;
        last = t;
        ticks++;
        if (reset_asked) { reset_asked = 0; max_gap = 0; ticks = 0; }
        /* Pages owed since the start at RATE, written now. */
        static uint64_t written;
        uint64_t owed = (uint64_t)((double)(t - start) * pages_per_us);
        /* After a long stop it does not catch up more than 16 MiB at once:
         * its own catching up would count as the next stall. */
        if (owed > written + 4096) written = owed - 4096;
        while (written < owed) {
            write_page(next, gen++);
            next = (next + 1) % npages;
            written++;
        }
        if (check_asked) { check_asked = 0; check_pages(); }
        if (t - last_pub >= 20000) {
            char msg[64];
            snprintf(msg, sizeof msg, "%llu %llu\n", (unsigned long long)max_gap, (unsigned long long)ticks);
            publish(stalls, stalls_tmp, msg);
            last_pub = t;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 7 && strcmp(argv[1], "writer") == 0) {
        syscall(SYS_close_range, 3U, ~0U, 0U);
        return writer(argv);
    }
    if (argc >= 4 && (strcmp(argv[1], "tree") == 0 || strcmp(argv[1], "vmas") == 0)) {
        syscall(SYS_close_range, 3U, ~0U, 0U);
        return shapes(argc, argv);
    }
    if (argc < 4) {
        fprintf(stderr, "usage: %s hold|sink MIB READY [RESULT|thp]\n", argv[0]);
        return 2;
    }
    /* Only stdin/out/err (/dev/null) stay open: descriptors inherited from
     * whatever started the benchmark (pipes to a CI runner...) are not ours. */
    syscall(SYS_close_range, 3U, ~0U, 0U);
    int hold = strcmp(argv[1], "hold") == 0;
    size_t len = strtoull(argv[2], NULL, 10) << 20;
    npages = len / PAGE;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    mem = m;
    if (hold) {
        if (argc < 5) {
            fprintf(stderr, "hold needs a RESULT path\n");
            return 2;
        }
        result_path = argv[4];
        snprintf(result_tmp, sizeof result_tmp, "%s.tmp", result_path);
        for (size_t p = 0; p < npages; p++)
            for (size_t j = 0; j < WORDS; j++)
                mem[p * WORDS + j] = pattern(p, j);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr1;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        sigaction(SIGUSR1, &sa, NULL);
    } else if (argc > 4 && strcmp(argv[4], "thp") == 0) {
        madvise(m, len, MADV_HUGEPAGE);
    }
    char ready[128], ready_tmp[4096];
    snprintf(ready, sizeof ready, "%lu %zu\n", (unsigned long)(uintptr_t)m, len);
    snprintf(ready_tmp, sizeof ready_tmp, "%s.tmp", argv[3]);
    if (publish(argv[3], ready_tmp, ready) != 0) {
        perror("ready file");
        return 1;
    }
    for (;;)
        pause();
}
