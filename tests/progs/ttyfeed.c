/* ttyfeed FILE: copies FILE to standard output and keeps following it as it
 * grows (like tail -f, with a plain 10 ms poll that survives a restore). */
#include "harness.h"

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: ttyfeed FILE\n"); return 2; }
    close_range(3, ~0U, 0);
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror(argv[1]); return 1; }
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { perror("read"); return 1; }
        if (n == 0) { sleep_ms(10); continue; }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, n - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return 0;
            off += w;
        }
    }
}
