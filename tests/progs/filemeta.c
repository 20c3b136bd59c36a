/* File metadata: a file deleted while open comes back with its owner,
 * mode and access/modification times; a regular file the process holds is
 * not modified (nor read) by the dump or the restore: same size, mtime and
 * atime. */
#include "harness.h"
#include <sys/stat.h>

static const struct timespec DEL_TIMES[2] = { { 1000000000, 123456789 }, { 1200000000, 987654321 } };
/* atime before mtime: a read would move it (relatime). */
static const struct timespec KEEP_TIMES[2] = { { 1100000000, 111111111 }, { 1300000000, 222222222 } };

int main(int argc, char **argv) {
    setup(argc, argv);
    char work[4200];
    snprintf(work, sizeof work, "%s/work", test_dir);
    mkdir(work, 0755);
    CHECK(chdir(work) == 0, "chdir");
    int del = open("meta.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(write(del, "metadata-kept", 13) == 13, "write");
    CHECK(fchown(del, 1234, 5678) == 0, "fchown");
    CHECK(fchmod(del, 02654) == 0, "fchmod");
    CHECK(futimens(del, DEL_TIMES) == 0, "futimens");
    CHECK(unlink("meta.txt") == 0, "unlink");
    int keep = open("keep.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(write(keep, "keep-me-as-i-am", 15) == 15, "write keep");
    lseek(keep, 4, SEEK_SET);
    CHECK(futimens(keep, KEEP_TIMES) == 0, "futimens keep");
    ready();
    wait_go();
    struct stat s;
    CHECK(fstat(del, &s) == 0 && s.st_nlink == 0 && s.st_size == 13, "deleted file: nlink %ld size %ld", (long)s.st_nlink, (long)s.st_size);
    CHECK(s.st_uid == 1234 && s.st_gid == 5678, "deleted file owner %d:%d", (int)s.st_uid, (int)s.st_gid);
    CHECK((s.st_mode & 07777) == 02654, "deleted file mode %o", s.st_mode & 07777);
    CHECK(s.st_atim.tv_sec == DEL_TIMES[0].tv_sec && s.st_atim.tv_nsec == DEL_TIMES[0].tv_nsec, "deleted file atime %ld.%09ld", (long)s.st_atim.tv_sec, s.st_atim.tv_nsec);
    CHECK(s.st_mtim.tv_sec == DEL_TIMES[1].tv_sec && s.st_mtim.tv_nsec == DEL_TIMES[1].tv_nsec, "deleted file mtime %ld.%09ld", (long)s.st_mtim.tv_sec, s.st_mtim.tv_nsec);
    CHECK(stat("keep.txt", &s) == 0 && s.st_size == 15, "kept file size %ld", (long)s.st_size);
    CHECK(s.st_mtim.tv_sec == KEEP_TIMES[1].tv_sec && s.st_mtim.tv_nsec == KEEP_TIMES[1].tv_nsec, "kept file mtime changed: %ld.%09ld", (long)s.st_mtim.tv_sec, s.st_mtim.tv_nsec);
    CHECK(s.st_atim.tv_sec == KEEP_TIMES[0].tv_sec && s.st_atim.tv_nsec == KEEP_TIMES[0].tv_nsec, "kept file atime changed: %ld.%09ld", (long)s.st_atim.tv_sec, s.st_atim.tv_nsec);
    char buf[16] = {0};
    CHECK(pread(del, buf, 13, 0) == 13 && memcmp(buf, "metadata-kept", 13) == 0, "deleted file contents %s", buf);
    CHECK(read(keep, buf, 3) == 3 && memcmp(buf, "-me", 3) == 0, "kept file offset");
    pass();
}
