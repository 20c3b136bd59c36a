/* Memory: heap, brk, sparse anonymous mmap, guard regions, read-only and
 * PROT_NONE data, private file mapping with modified pages, shared file
 * mapping, shared anonymous memory, the stack, and growth after restore. */
#include "harness.h"
#include <sys/mman.h>

#define PG 4096
/* The smaps entry of the mapping at `addr`: whether its VmFlags hold `flag`,
 * and its AnonHugePages in KiB. */
static int smaps_of(void *addr, const char *flag, long *huge_kb) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512]; int in = 0, has = 0; *huge_kb = -1;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) { in = (unsigned long)addr >= lo && (unsigned long)addr < hi; continue; }
        if (!in) continue;
        if (!strncmp(line, "AnonHugePages:", 14)) *huge_kb = atol(line + 14);
        if (!strncmp(line, "VmFlags:", 8)) { char pat[8]; snprintf(pat, sizeof pat, " %s", flag); has = strstr(line, pat) != NULL; }
    }
    if (f) fclose(f);
    return has;
}

static int recurse(int depth) { volatile char buf[4096]; buf[0] = (char)depth; return depth ? recurse(depth - 1) + buf[0] : 0; }

int main(int argc, char **argv) {
    setup(argc, argv);
    char path[4200];
    size_t hsz = 8 << 20;
    unsigned char *heap = malloc(hsz); fill(heap, hsz, 1);
    unsigned char *brkp = sbrk(64 * 1024); fill(brkp, 64 * 1024, 2);
    size_t msz = 32 << 20;
    unsigned char *m = mmap(NULL, msz + 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t off = 0; off < msz; off += 2 * PG) fill(m + off, PG, 3 + off / PG);
    mprotect(m + msz, 16 * PG, PROT_NONE); /* a guard region */
    unsigned char *ro = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(ro, 4 * PG, 4); mprotect(ro, 4 * PG, PROT_READ);
    unsigned char *none = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(none, 2 * PG, 5); mprotect(none, 2 * PG, PROT_NONE);
    snprintf(path, sizeof path, "%s/private.dat", test_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unsigned char *fbuf = malloc(16 * PG); fill(fbuf, 16 * PG, 6);
    CHECK(write(fd, fbuf, 16 * PG) == 16 * PG, "write private.dat");
    unsigned char *fp = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    fill(fp + 3 * PG, PG, 7); fill(fp + 7 * PG, PG, 8);
    snprintf(path, sizeof path, "%s/shared.dat", test_dir);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(ftruncate(fd, 4 * PG) == 0, "truncate shared.dat");
    unsigned char *fs = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    fill(fs + PG, PG, 9);
    unsigned char *sa = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    fill(sa, 8 * PG, 10);
    unsigned char stackbuf[64 * 1024]; fill(stackbuf, sizeof stackbuf, 11);
    /* MADV_HUGEPAGE memory, 2 MiB aligned: restored with the advice, and as
     * huge pages again if it had them. */
    size_t tsz = 8 << 20;
    unsigned char *thp_raw = mmap(NULL, tsz + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *thp = (unsigned char *)(((unsigned long)thp_raw + (2 << 20) - 1) & ~((2UL << 20) - 1));
    CHECK(madvise(thp, tsz, MADV_HUGEPAGE) == 0, "madvise hugepage: %s", strerror(errno));
    fill(thp, tsz, 15);
    long huge_before, huge_after;
    CHECK(smaps_of(thp, "hg", &huge_before), "no hg flag before the dump");

    ready();
    wait_go();

    long bad;
    CHECK((bad = check_fill(heap, hsz, 1)) < 0, "heap word %ld", bad);
    CHECK((bad = check_fill(brkp, 64 * 1024, 2)) < 0, "brk word %ld", bad);
    for (size_t off = 0; off < msz; off += PG) {
        if ((off / PG) % 2 == 0) CHECK((bad = check_fill(m + off, PG, 3 + off / PG)) < 0, "mmap page %zu word %ld", off / PG, bad);
        else for (size_t i = 0; i < PG; i++) CHECK(m[off + i] == 0, "untouched page %zu not zero", off / PG);
    }
    CHECK((bad = check_fill(ro, 4 * PG, 4)) < 0, "read-only word %ld", bad);
    CHECK(mprotect(none, 2 * PG, PROT_READ) == 0, "mprotect none");
    CHECK((bad = check_fill(none, 2 * PG, 5)) < 0, "PROT_NONE data word %ld", bad);
    for (int p = 0; p < 16; p++) {
        int seed = p == 3 ? 7 : p == 7 ? 8 : 6;
        const unsigned char *want = p == 3 || p == 7 ? NULL : fbuf + p * PG;
        if (want) CHECK(memcmp(fp + p * PG, want, PG) == 0, "private file page %d", p);
        else CHECK((bad = check_fill(fp + p * PG, PG, seed)) < 0, "modified private file page %d word %ld", p, bad);
    }
    /* The private changes must not have reached the file. */
    snprintf(path, sizeof path, "%s/private.dat", test_dir);
    fd = open(path, O_RDONLY);
    unsigned char page[PG];
    CHECK(pread(fd, page, PG, 3 * PG) == PG && memcmp(page, fbuf + 3 * PG, PG) == 0, "private change leaked into the file");
    close(fd);
    CHECK((bad = check_fill(fs + PG, PG, 9)) < 0, "shared file page word %ld", bad);
    fill(fs + 2 * PG, PG, 12); /* still shared with the file? */
    snprintf(path, sizeof path, "%s/shared.dat", test_dir);
    fd = open(path, O_RDONLY);
    CHECK(pread(fd, page, PG, 2 * PG) == PG && check_fill(page, PG, 12) < 0, "shared mapping no longer writes to the file");
    close(fd);
    CHECK((bad = check_fill(sa, 8 * PG, 10)) < 0, "shared anonymous word %ld", bad);
    CHECK((bad = check_fill(stackbuf, sizeof stackbuf, 11)) < 0, "stack word %ld", bad);
    CHECK((bad = check_fill(thp, tsz, 15)) < 0, "MADV_HUGEPAGE word %ld", bad);
    CHECK(smaps_of(thp, "hg", &huge_after), "MADV_HUGEPAGE lost");
    CHECK(huge_before <= 0 || huge_after > 0, "huge pages before (%ld KiB), none after restore", huge_before);
    /* The process can still grow: heap, brk, stack. */
    unsigned char *more = malloc(16 << 20); fill(more, 16 << 20, 13);
    CHECK(check_fill(more, 16 << 20, 13) < 0, "new malloc");
    unsigned char *b2 = sbrk(1 << 20); CHECK(b2 != (void *)-1, "sbrk after restore: %s", strerror(errno));
    fill(b2, 1 << 20, 14);
    recurse(1000); /* ~4 MiB of stack: the stack must still grow down */
    pass();
}
