/* Many mappings: 3000 one-page mappings that cannot merge (alternating
 * protections, some with MADV_DONTFORK), each holding its own pattern. They
 * are rebuilt in batches of injected calls (more than one table); after
 * restore every page holds its pattern, keeps its protection and advice,
 * and the process can still map and unmap. */
#include "harness.h"
#include <sys/mman.h>

#define PG 4096
#define N 3000

static char *maps[N];

/* The smaps VmFlags of the mapping at `addr` contain `flag`. */
static int has_flag(void *addr, const char *flag) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512], pat[8]; int in = 0, has = 0;
    snprintf(pat, sizeof pat, " %s", flag);
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) { in = (unsigned long)addr >= lo && (unsigned long)addr < hi; continue; }
        if (in && !strncmp(line, "VmFlags:", 8)) has = strstr(line, pat) != NULL;
    }
    if (f) fclose(f);
    return has;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    for (int i = 0; i < N; i++) {
        maps[i] = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(maps[i] != MAP_FAILED, "mmap %d: %s", i, strerror(errno));
        fill(maps[i], PG, 1000 + i);
        if (i % 2) CHECK(mprotect(maps[i], PG, PROT_READ) == 0, "mprotect %d", i);
        if (i % 7 == 0) CHECK(madvise(maps[i], PG, MADV_DONTFORK) == 0, "madvise %d", i);
    }
    ready();
    wait_go();
    long bad;
    for (int i = 0; i < N; i++) {
        CHECK((bad = check_fill(maps[i], PG, 1000 + i)) < 0, "mapping %d word %ld", i, bad);
        if (i % 210 == 0) CHECK(has_flag(maps[i], "dc"), "mapping %d lost MADV_DONTFORK", i);
    }
    /* Protections: odd ones are read-only again (a write must fault). */
    CHECK(mprotect(maps[2], PG, PROT_READ | PROT_WRITE) == 0, "mprotect after restore");
    maps[2][0] = 1;
    CHECK(!has_flag(maps[1], "wr") && has_flag(maps[1], "rd"), "mapping 1 is not read-only");
    CHECK(has_flag(maps[0], "wr"), "mapping 0 is not writable");
    for (int i = 0; i < N; i += 3) CHECK(munmap(maps[i], PG) == 0, "munmap %d", i);
    char *more = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(more != MAP_FAILED, "mmap after restore");
    fill(more, 1 << 20, 7);
    pass();
}
