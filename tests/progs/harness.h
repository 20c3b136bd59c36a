/* The protocol between a Godwit test program and the test harness.
 * The program sets its state up, creates DIR/ready, waits for DIR/go (the
 * harness creates it after dump + restore), verifies its state and writes
 * "PASS" or "FAIL: why" to DIR/result. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char test_dir[4096];

__attribute__((unused)) static void put_file(const char *name, const char *text) {
    char p[4200], tmp[4300];
    snprintf(p, sizeof p, "%s/%s", test_dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) _exit(90);
    if (write(fd, text, strlen(text)) < 0) _exit(91);
    close(fd);
    rename(tmp, p);
}

__attribute__((unused)) static void setup(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); exit(2); }
    snprintf(test_dir, sizeof test_dir, "%s", argv[1]);
    /* Descriptors inherited from whoever started us are not our state. */
    close_range(3, ~0U, 0);
}

__attribute__((unused)) static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

__attribute__((unused)) static void ready(void) { put_file("ready", "ready\n"); }

__attribute__((unused)) static void wait_go(void) {
    char p[4200];
    snprintf(p, sizeof p, "%s/go", test_dir);
    while (access(p, F_OK) != 0) sleep_ms(10);
}

__attribute__((unused)) static void fail(const char *fmt, ...) {
    char msg[1024] = "FAIL: ";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 6, sizeof msg - 7, fmt, ap);
    va_end(ap);
    strcat(msg, "\n");
    put_file("result", msg);
    exit(1);
}

__attribute__((unused)) static void pass(void) { put_file("result", "PASS\n"); exit(0); }

#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

/* A pattern that differs per word, region and seed. */
__attribute__((unused)) static inline uint64_t pat(uint64_t seed, uint64_t i) { return (seed * 0x9E3779B97F4A7C15ULL) ^ (i * 0xBF58476D1CE4E5B9ULL) ^ i; }
__attribute__((unused)) static void fill(void *p, size_t n, uint64_t seed) { uint64_t *w = p; for (size_t i = 0; i < n / 8; i++) w[i] = pat(seed, i); }
__attribute__((unused)) static long check_fill(const void *p, size_t n, uint64_t seed) { const uint64_t *w = p; for (size_t i = 0; i < n / 8; i++) if (w[i] != pat(seed, i)) return (long)i; return -1; }
