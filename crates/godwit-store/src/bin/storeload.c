/* The load of the store benchmark: SIZE MiB of memory filled with a mix
 * of page kinds (40% heap-like words, 30% text, 20% random bytes, 10% a
 * repeated record), then, for each line "w N" on stdin, N MiB of pages
 * rewritten at random places with fresh content; "ok" answers each. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PG 4096
static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static const char *words[] = {"the", "process", "memory", "page", "checkpoint", "node", "store",
    "restore", "value", "key", "request", "session", "user", "id", "name", "error", "ok", "data"};

static void fill_page(unsigned char *p, uint64_t i) {
    uint64_t kind = (i * 0x9E3779B97F4A7C15ULL >> 40) % 10;
    uint64_t *w = (uint64_t *)p;
    if (kind < 4) { /* heap: pointers, small integers, lengths */
        for (int k = 0; k < PG / 8; k++) {
            uint64_t r = next();
            w[k] = (r & 3) == 0 ? 0x00007f0000000000ULL + (r >> 20 & 0xffffff0) : (r & 3) == 1 ? (r >> 32) & 0xff : (r & 3) == 2 ? 0 : i + k;
        }
    } else if (kind < 7) { /* text */
        size_t n = 0;
        while (n < PG) {
            const char *s = words[next() % (sizeof words / sizeof *words)];
            size_t l = strlen(s);
            if (n + l + 1 > PG) { memset(p + n, ' ', PG - n); break; }
            memcpy(p + n, s, l); n += l; p[n++] = (next() & 7) ? ' ' : '\n';
        }
    } else if (kind < 9) { /* random */
        for (int k = 0; k < PG / 8; k++) w[k] = next();
    } else { /* records */
        for (int k = 0; k < PG / 8; k += 4) { w[k] = i; w[k + 1] = 0x1234; w[k + 2] = k; w[k + 3] = 0; }
    }
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    size_t size = mib << 20, pages = size / PG;
    unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < pages; i++) fill_page(m + i * PG, i);
    printf("ready\n"); fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = 0;
        if (sscanf(line, "w %zu", &n) == 1) {
            for (size_t k = 0; k < (n << 20) / PG; k++) {
                size_t i = next() % pages;
                fill_page(m + i * PG, i + next());
            }
        }
        printf("ok\n"); fflush(stdout);
    }
    return 0;
}
