/* A memfd's access and modification times (set with futimens after its
 * data was written, through write() and a shared mapping) come back. */
#include "harness.h"
#include <sys/mman.h>

static const struct timespec TIMES[2] = { { 1000000000, 123456789 }, { 1200000000, 987654321 } };

int main(int argc, char **argv) {
    setup(argc, argv);
    int m = memfd_create("meta", MFD_ALLOW_SEALING);
    CHECK(m >= 0 && ftruncate(m, 8192) == 0, "memfd");
    CHECK(pwrite(m, "memfd-data", 10, 0) == 10, "write");
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
    CHECK(p != MAP_FAILED, "mmap");
    strcpy(p + 4096, "mapped");
    CHECK(futimens(m, TIMES) == 0, "futimens");
    ready();
    wait_go();
    struct stat s;
    CHECK(fstat(m, &s) == 0 && s.st_size == 8192, "memfd size");
    CHECK(s.st_atim.tv_sec == TIMES[0].tv_sec && s.st_atim.tv_nsec == TIMES[0].tv_nsec, "memfd atime %ld.%09ld", (long)s.st_atim.tv_sec, s.st_atim.tv_nsec);
    CHECK(s.st_mtim.tv_sec == TIMES[1].tv_sec && s.st_mtim.tv_nsec == TIMES[1].tv_nsec, "memfd mtime %ld.%09ld", (long)s.st_mtim.tv_sec, s.st_mtim.tv_nsec);
    char buf[16] = {0};
    CHECK(pread(m, buf, 10, 0) == 10 && memcmp(buf, "memfd-data", 10) == 0, "memfd data %s", buf);
    CHECK(strcmp(p + 4096, "mapped") == 0, "mapping lost its data");
    pass();
}
