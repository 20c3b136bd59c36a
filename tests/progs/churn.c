/* Changes its memory map while it is dumped with --leave-running, to prove
 * the pre-copy notices memory that goes away or comes back under it.
 * Region A (32 MiB of 64 KiB chunks): each step either releases a chunk
 * (MADV_DONTNEED: it reads as zeros from then on) or fills it with a new
 * generation. Region B (16 MiB): each step may unmap a chunk and map a new
 * one in its place (a new mapping, never write-protected), then fill it.
 * A small ledger records what every chunk must hold. After DIR/go (checked
 * between steps, so no step is half done), every chunk is
 * checked against the ledger: a copy that kept a released chunk's old
 * contents, or an old copy of a chunk written since, fails. One step every
 * 5 ms (~13 MiB/s of changes), so that a pre-copy converges. */
#include "harness.h"
#include <sys/mman.h>

#define CHUNK (64 * 1024)
#define A_CHUNKS 512
#define B_CHUNKS 256

static unsigned char *a, *b, *sparse;
/* 256 MiB of address space with one page written: its holes must not be
 * copied (the dump's memory_bytes stays small). */
#define SPARSE (256UL << 20)
static uint64_t ledger_a[A_CHUNKS], ledger_b[B_CHUNKS];

static void fill_chunk(unsigned char *p, uint64_t g) {
    uint64_t *w = (uint64_t *)p;
    for (size_t k = 0; k < CHUNK / 8; k++) w[k] = g;
}

static int holds(const unsigned char *p, uint64_t g) {
    const uint64_t *w = (const uint64_t *)p;
    for (size_t k = 0; k < CHUNK / 8; k++)
        if (w[k] != g) return 0;
    return 1;
}

static uint64_t rnd(void) {
    static uint64_t x = 88172645463325252ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    a = mmap(NULL, (size_t)A_CHUNKS * CHUNK, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    b = mmap(NULL, (size_t)B_CHUNKS * CHUNK, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    sparse = mmap(NULL, SPARSE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED || sparse == MAP_FAILED) fail("mmap");
    sparse[SPARSE / 2] = 42;
    uint64_t g = 1;
    for (long i = 0; i < A_CHUNKS; i++) fill_chunk(a + i * CHUNK, ledger_a[i] = g++);
    for (long i = 0; i < B_CHUNKS; i++) fill_chunk(b + i * CHUNK, ledger_b[i] = g++);
    ready();
    char go[4200];
    snprintf(go, sizeof go, "%s/go", test_dir);
    for (long step = 0; access(go, F_OK) != 0; step++) {
        uint64_t r = rnd();
        if (r & 1) {
            long i = (r >> 8) % A_CHUNKS;
            if (r & 2) {
                if (madvise(a + i * CHUNK, CHUNK, MADV_DONTNEED) != 0) fail("madvise");
                ledger_a[i] = 0;
            } else {
                fill_chunk(a + i * CHUNK, g);
                ledger_a[i] = g++;
            }
        } else {
            long i = (r >> 8) % B_CHUNKS;
            if (r & 2) {
                unsigned char *p = b + i * CHUNK;
                if (munmap(p, CHUNK) != 0) fail("munmap");
                if (mmap(p, CHUNK, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != p)
                    fail("mmap again");
            }
            fill_chunk(b + i * CHUNK, g);
            ledger_b[i] = g++;
        }
        sleep_ms(5);
    }
    if (sparse[SPARSE / 2] != 42 || sparse[0] != 0 || sparse[SPARSE - 1] != 0)
        fail("the sparse mapping changed");
    for (long i = 0; i < A_CHUNKS; i++)
        if (!holds(a + i * CHUNK, ledger_a[i]))
            fail("chunk %ld of A does not hold %llu", i, (unsigned long long)ledger_a[i]);
    for (long i = 0; i < B_CHUNKS; i++)
        if (!holds(b + i * CHUNK, ledger_b[i]))
            fail("chunk %ld of B does not hold %llu", i, (unsigned long long)ledger_b[i]);
    pass();
}
