/* launch CMD ARGS...: runs CMD with only fds 0-2, so that descriptors
 * inherited from the test runner do not become part of its state. */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: launch CMD [ARGS...]\n"); return 2; }
    close_range(3, ~0U, 0);
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}
