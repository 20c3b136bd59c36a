/* Holds a POSIX timer (timer_create), which dump refuses for now. */
#include "harness.h"
#include <signal.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    timer_t t;
    struct sigevent ev = { .sigev_notify = SIGEV_NONE };
    CHECK(timer_create(CLOCK_MONOTONIC, &ev, &t) == 0, "timer_create");
    struct itimerspec v = { {1, 0}, {1, 0} };
    timer_settime(t, 0, &v, NULL);
    ready();
    wait_go();
    pass();
}
