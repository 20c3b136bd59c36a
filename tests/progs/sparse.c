/* Sparse files deleted while open: their holes come back where they were
 * (SEEK_DATA / SEEK_HOLE find the same ranges), with the data between them;
 * a file that is one hole; a 1 GiB file holding one page of data (the dump
 * keeps the data, not the size). */
#include "harness.h"
#include <sys/stat.h>

#define MIB (1L << 20)

static int make(const char *name, off_t size) {
    int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, size) != 0 || unlink(name) != 0) fail("making %s", name);
    return fd;
}

static void expect(int fd, off_t from, int whence, off_t want, const char *what) {
    off_t got = lseek(fd, from, whence);
    if (want < 0) CHECK(got < 0 && errno == ENXIO, "%s: %s from %ld gives %ld, not ENXIO", what, whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", (long)from, (long)got);
    else CHECK(got == want, "%s: %s from %ld gives %ld, not %ld", what, whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", (long)from, (long)got, (long)want);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    char work[4200];
    snprintf(work, sizeof work, "%s/work", test_dir);
    mkdir(work, 0755);
    CHECK(chdir(work) == 0, "chdir");
    static char a[4096], b[8192];
    fill(a, sizeof a, 1); fill(b, sizeof b, 2);
    /* data [0, 4 KiB), hole, data [1 MiB, 1 MiB + 8 KiB), hole to 4 MiB */
    int sp = make("sparse.bin", 4 * MIB);
    CHECK(pwrite(sp, a, sizeof a, 0) == sizeof a && pwrite(sp, b, sizeof b, MIB) == sizeof b, "write sparse");
    int empty = make("empty.bin", 2 * MIB);
    int huge = make("huge.bin", 1024 * MIB);
    CHECK(pwrite(huge, a, sizeof a, 512 * MIB) == sizeof a, "write huge");
    /* Only if this filesystem keeps holes at all. */
    CHECK(lseek(sp, 0, SEEK_HOLE) == 4096, "no holes on this filesystem");
    lseek(sp, 100, SEEK_SET);
    ready();
    wait_go();
    struct stat s;
    CHECK(fstat(sp, &s) == 0 && s.st_size == 4 * MIB && s.st_nlink == 0, "sparse: size %ld", (long)s.st_size);
    CHECK(lseek(sp, 0, SEEK_CUR) == 100, "sparse: offset");
    expect(sp, 0, SEEK_DATA, 0, "sparse");
    expect(sp, 0, SEEK_HOLE, 4096, "sparse");
    expect(sp, 4096, SEEK_DATA, MIB, "sparse");
    expect(sp, MIB, SEEK_HOLE, MIB + 8192, "sparse");
    expect(sp, MIB + 8192, SEEK_DATA, -1, "sparse");
    static char back[8192], zero[8192];
    CHECK(pread(sp, back, 4096, 0) == 4096 && check_fill(back, 4096, 1) < 0, "sparse: first range");
    CHECK(pread(sp, back, 8192, MIB) == 8192 && check_fill(back, 8192, 2) < 0, "sparse: second range");
    CHECK(pread(sp, back, 8192, 2 * MIB) == 8192 && memcmp(back, zero, 8192) == 0, "sparse: hole not zero");
    CHECK(fstat(empty, &s) == 0 && s.st_size == 2 * MIB, "empty: size %ld", (long)s.st_size);
    expect(empty, 0, SEEK_DATA, -1, "empty");
    CHECK(fstat(huge, &s) == 0 && s.st_size == 1024 * MIB && s.st_blocks <= 64, "huge: size %ld, %ld blocks", (long)s.st_size, (long)s.st_blocks);
    expect(huge, 0, SEEK_DATA, 512 * MIB, "huge");
    expect(huge, 512 * MIB, SEEK_HOLE, 512 * MIB + 4096, "huge");
    CHECK(pread(huge, back, 4096, 512 * MIB) == 4096 && check_fill(back, 4096, 1) < 0, "huge: data");
    pass();
}
