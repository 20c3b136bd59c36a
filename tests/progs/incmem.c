/* Memory written all the time, for incremental checkpoints: 64 MiB of
 * pages, one page rewritten per step at a scattered place with a value
 * derived from the step number, so that the whole of the memory at step n
 * is known from n alone. Every 64 steps a 1 MiB region is moved (mremap)
 * between two places, and every 256 a 256 KiB region is unmapped and mapped
 * again with new contents. After a restore (DIR/go), the program finishes
 * the step it was in, checks every page against its step counter, writes
 * that counter to DIR/steps, and PASS.
 *
 * argv[2] = "fork": after 2.5 s a child holding 16 MiB appears (the tree
 * changes: the next incremental checkpoint must be a full one).
 * argv[2] = "still": no mapping is moved or replaced. */
#include "harness.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL
#define NP 16384UL /* 64 MiB */
#define SIDE (1UL << 20)
#define TSIZE (256UL << 10)

static uint64_t *M;
static volatile uint64_t steps;
static char *slots;
static volatile int s_at;
static volatile uint64_t s_seed;
static char *volatile T;
static volatile uint64_t t_seed;

#define BARRIER() __asm__ __volatile__("" ::: "memory")

static uint64_t idx(uint64_t k) { return (k * 2654435761ULL) % NP; }

static void write_page(uint64_t i, uint64_t v) {
    uint64_t *w = M + i * (PG / 8);
    for (uint64_t j = 0; j < PG / 8; j++) w[j] = pat(v, i * (PG / 8) + j);
}

static char *slot(int n) { return slots + (size_t)n * SIDE; }

static void move_side(uint64_t k) {
    char *from = slot(s_at), *to = slot(1 - s_at);
    if (mremap(from, SIDE, SIDE, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED)
        fail("mremap: %s", strerror(errno));
    /* The place it left stays reserved: nothing else is mapped there. */
    if (mmap(from, SIDE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    BARRIER();
    s_at = 1 - s_at;
    BARRIER();
    if (k % 1024 == 0) {
        /* Rewritten at its new place now and then. */
        s_seed = 0;
        BARRIER();
        fill(slot(s_at), SIDE, k);
        BARRIER();
        s_seed = k;
    }
}

static void renew_t(uint64_t k) {
    T = NULL;
    BARRIER();
    char *t = mmap(NULL, TSIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED) fail("mmap: %s", strerror(errno));
    fill(t, TSIZE, k + 7777);
    t_seed = k + 7777;
    BARRIER();
    T = t;
}

static char *old_t;
static int still;

static void step(uint64_t k) {
    write_page(idx(k), k);
    BARRIER();
    steps = k;
    BARRIER();
    if (still) return;
    if (k % 64 == 0) move_side(k);
    if (k % 256 == 0) {
        old_t = T;
        renew_t(k);
        if (old_t && munmap(old_t, TSIZE) != 0) fail("munmap: %s", strerror(errno));
        old_t = NULL;
    }
}

static void verify(void) {
    uint64_t n = steps;
    uint64_t *exp = calloc(NP, sizeof *exp);
    if (!exp) fail("calloc");
    for (uint64_t k = 1; k <= n; k++) exp[idx(k)] = k;
    for (uint64_t i = 0; i < NP; i++) {
        const uint64_t *w = M + i * (PG / 8);
        for (uint64_t j = 0; j < PG / 8; j++)
            if (w[j] != pat(exp[i], i * (PG / 8) + j))
                fail("page %lu word %lu: %#lx, not %#lx (step %lu written at step %lu)", i, j, w[j],
                     pat(exp[i], i * (PG / 8) + j), exp[i], n);
    }
    if (s_seed != 0) {
        long bad = check_fill(slot(s_at), SIDE, s_seed);
        if (bad >= 0) fail("moved region at %p, word %ld (seed %lu, step %lu)", slot(s_at), bad, s_seed, n);
    }
    if (T) {
        long bad = check_fill(T, TSIZE, t_seed);
        if (bad >= 0) fail("remapped region at %p, word %ld (seed %lu, step %lu)", T, bad, t_seed, n);
    }
    char text[64];
    snprintf(text, sizeof text, "%lu\n", n);
    put_file("steps", text);
    pass();
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int forking = argc > 2 && strcmp(argv[2], "fork") == 0;
    still = argc > 2 && strcmp(argv[2], "still") == 0;
    M = mmap(NULL, NP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (M == MAP_FAILED) fail("mmap: %s", strerror(errno));
    for (uint64_t i = 0; i < NP; i++) write_page(i, 0);
    slots = mmap(NULL, 2 * SIDE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) fail("mmap: %s", strerror(errno));
    if (mmap(slot(0), SIDE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    fill(slot(0), SIDE, 1);
    s_seed = 1;
    renew_t(0);
    char go[4200];
    snprintf(go, sizeof go, "%s/go", test_dir);
    double t0 = now_s();
    int forked = 0;
    ready();
    for (uint64_t k = 1;; k++) {
        step(k);
        sleep_ms(1);
        if (k % 64 == 0 && access(go, F_OK) == 0) verify();
        if (forking && !forked && now_s() - t0 > 2.5) {
            forked = 1;
            pid_t c = fork();
            if (c < 0) fail("fork: %s", strerror(errno));
            if (c == 0) {
                size_t n = 16UL << 20;
                char *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (m == MAP_FAILED) _exit(1);
                fill(m, n, 99);
                for (;;) pause();
            }
        }
    }
}
