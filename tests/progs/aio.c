/* An AIO context (io_setup, raw syscalls) with three buffered reads of a
 * file submitted and completed, one event reaped and two left in the
 * ring. AIO contexts are not restored yet: the dump is refused naming the
 * context (its id, the ring's address); the program then checks that the
 * context works on unharmed (the two events, then new reads). */
#include "harness.h"
#include <linux/aio_abi.h>
#include <sys/syscall.h>

static long sys_setup(unsigned n, aio_context_t *c) { return syscall(SYS_io_setup, n, c); }
static long sys_submit(aio_context_t c, long n, struct iocb **v) { return syscall(SYS_io_submit, c, n, v); }
static long sys_getevents(aio_context_t c, long min, long max, struct io_event *e, struct timespec *t) {
    return syscall(SYS_io_getevents, c, min, max, e, t);
}
static long sys_destroy(aio_context_t c) { return syscall(SYS_io_destroy, c); }

static char bufs[8][64];
static struct iocb cbs[8];

static void prep(int i, int fd, long long off) {
    memset(&cbs[i], 0, sizeof cbs[i]);
    cbs[i].aio_data = 0x1000 + i;
    cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
    cbs[i].aio_fildes = fd;
    cbs[i].aio_buf = (uint64_t)(uintptr_t)bufs[i];
    cbs[i].aio_nbytes = 10 + i;
    cbs[i].aio_offset = off;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    char path[4200];
    snprintf(path, sizeof path, "%s/data", test_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, "open data");
    char text[256];
    for (int i = 0; i < 256; i++) text[i] = 'a' + i % 26;
    CHECK(write(fd, text, sizeof text) == sizeof text, "write data");

    aio_context_t ctx = 0;
    CHECK(sys_setup(8, &ctx) == 0, "io_setup: %d", errno);
    char id[64];
    snprintf(id, sizeof id, "%#lx\n", (unsigned long)ctx);
    put_file("ctx", id);
    struct iocb *v[3];
    for (int i = 0; i < 3; i++) { prep(i, fd, 7 * i); v[i] = &cbs[i]; }
    CHECK(sys_submit(ctx, 3, v) == 3, "io_submit: %d", errno);
    struct io_event ev[8];
    struct timespec ts = { 2, 0 };
    CHECK(sys_getevents(ctx, 1, 1, ev, &ts) == 1, "first io_getevents");

    ready();
    wait_go();

    CHECK(sys_getevents(ctx, 2, 8, ev, &ts) == 2, "io_getevents after the refused dump (errno %d)", errno);
    for (int i = 0; i < 2; i++)
        CHECK(ev[i].data == 0x1001 + (unsigned)i && ev[i].res == 11 + i, "event %d", i);
    for (int round = 0; round < 40; round++) {
        for (int i = 0; i < 3; i++) { prep(i, fd, round + i); v[i] = &cbs[i]; }
        CHECK(sys_submit(ctx, 3, v) == 3, "io_submit (round %d): %d", round, errno);
        CHECK(sys_getevents(ctx, 3, 8, ev, &ts) == 3, "io_getevents (round %d)", round);
        CHECK(memcmp(bufs[2], text + round + 2, 12) == 0, "round %d data", round);
    }
    CHECK(sys_destroy(ctx) == 0, "io_destroy: %d", errno);
    pass();
}
