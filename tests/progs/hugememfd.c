/* Holds a hugetlb memfd (MFD_HUGETLB), which dump must refuse rather than
 * restore as an ordinary memfd. */
#include "harness.h"
#include <sys/mman.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    int fd = memfd_create("godwit-huge", MFD_HUGETLB | MFD_CLOEXEC);
    CHECK(fd >= 0, "memfd_create(MFD_HUGETLB): %s", strerror(errno));
    ready();
    wait_go();
    CHECK(fcntl(fd, F_GETFD) >= 0, "the hugetlb memfd is gone");
    pass();
}
