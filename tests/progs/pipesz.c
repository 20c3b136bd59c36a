/* Pipe buffer sizes (F_SETPIPE_SZ): a pipe grown to 256 KiB holding more
 * than the default 64 KiB, a pipe shrunk to one page, a FIFO grown to
 * 128 KiB. With "max" after the directory, one more pipe at 1 MiB (the
 * default fs.pipe-max-size), for the refusal test. */
#include "harness.h"
#include <sys/stat.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    int big[2], small[2], max[2] = {-1, -1};
    CHECK(pipe2(big, O_NONBLOCK) == 0 && pipe2(small, O_NONBLOCK) == 0, "pipe");
    CHECK(fcntl(big[1], F_SETPIPE_SZ, 256 << 10) == 256 << 10, "grow pipe");
    CHECK(fcntl(small[0], F_SETPIPE_SZ, 4096) == 4096, "shrink pipe");
    static char chunk[100000]; fill(chunk, sizeof chunk, 5);
    CHECK(write(big[1], chunk, sizeof chunk) == sizeof chunk, "fill big pipe");
    char fifo[4200]; snprintf(fifo, sizeof fifo, "%s/fifo", test_dir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    int ff = open(fifo, O_RDWR | O_NONBLOCK);
    CHECK(ff >= 0 && fcntl(ff, F_SETPIPE_SZ, 128 << 10) == 128 << 10, "grow FIFO");
    if (argc > 2 && strcmp(argv[2], "max") == 0) {
        CHECK(pipe(max) == 0 && fcntl(max[0], F_SETPIPE_SZ, 1 << 20) == 1 << 20, "pipe of 1 MiB");
    }
    ready();
    wait_go();
    CHECK(fcntl(big[0], F_GETPIPE_SZ) == 256 << 10, "big pipe: %d bytes", fcntl(big[0], F_GETPIPE_SZ));
    CHECK(fcntl(small[1], F_GETPIPE_SZ) == 4096, "small pipe: %d bytes", fcntl(small[1], F_GETPIPE_SZ));
    CHECK(fcntl(ff, F_GETPIPE_SZ) == 128 << 10, "FIFO: %d bytes", fcntl(ff, F_GETPIPE_SZ));
    if (max[0] >= 0) CHECK(fcntl(max[1], F_GETPIPE_SZ) == 1 << 20, "max pipe: %d bytes", fcntl(max[1], F_GETPIPE_SZ));
    static char back[100000];
    CHECK(read(big[0], back, sizeof back) == sizeof back && check_fill(back, sizeof back, 5) < 0, "big pipe data");
    /* The small pipe holds one page and no more. */
    static char page[4097];
    CHECK(write(small[1], page, 4097) == 4096, "small pipe took more than a page");
    pass();
}
