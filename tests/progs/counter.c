// The demo program: counts once every 100 ms, appending each value to a log
// file, so a restore can be seen continuing from where the dump stopped it.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "counter.log";
    FILE *f = fopen(path, "a");
    if (!f) { perror(path); return 1; }
    setvbuf(f, NULL, _IOLBF, 0);
    unsigned long n = 0;
    for (;;) {
        fprintf(f, "%lu\n", n++);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
