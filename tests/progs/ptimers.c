/* POSIX timers: a periodic SIGEV_SIGNAL timer carrying a value, a one-shot
 * SIGEV_NONE timer far in the future, and a periodic SIGEV_THREAD_ID timer;
 * after restore they keep their ids, keep firing, and keep their time. */
#include "harness.h"
#include <signal.h>
#include <sys/syscall.h>

static volatile long hits1, hits2, bad_value;
static void on_usr1(int s, siginfo_t *si, void *u) { (void)s; (void)u; hits1++; if (si->si_value.sival_int != 42) bad_value = 1; }
static void on_usr2(int s) { (void)s; hits2++; }

int main(int argc, char **argv) {
    setup(argc, argv);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_usr1; sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGUSR2, on_usr2);
    timer_t a, b, c;
    struct sigevent ea = {0}, eb = {0}, ec = {0};
    ea.sigev_notify = SIGEV_SIGNAL; ea.sigev_signo = SIGUSR1; ea.sigev_value.sival_int = 42;
    eb.sigev_notify = SIGEV_NONE;
    ec.sigev_notify = SIGEV_THREAD_ID; ec.sigev_signo = SIGUSR2; ec._sigev_un._tid = syscall(SYS_gettid);
    CHECK(timer_create(CLOCK_MONOTONIC, &ea, &a) == 0, "timer a");
    CHECK(timer_create(CLOCK_REALTIME, &eb, &b) == 0, "timer b");
    CHECK(timer_create(CLOCK_MONOTONIC, &ec, &c) == 0, "timer c");
    struct itimerspec pa = { {0, 20000000}, {0, 20000000} }, pb = { {0, 0}, {1000, 0} }, pc = { {0, 30000000}, {0, 30000000} };
    timer_settime(a, 0, &pa, NULL); timer_settime(b, 0, &pb, NULL); timer_settime(c, 0, &pc, NULL);
    sleep_ms(100);
    ready();
    wait_go();
    long h1 = hits1, h2 = hits2;
    sleep_ms(300);
    CHECK(hits1 > h1, "the SIGEV_SIGNAL timer stopped firing");
    CHECK(hits2 > h2, "the SIGEV_THREAD_ID timer stopped firing");
    CHECK(!bad_value, "the timer's signal value was lost");
    struct itimerspec g;
    CHECK(timer_gettime(a, &g) == 0 && g.it_interval.tv_nsec == 20000000, "timer a lost its id or interval");
    CHECK(timer_gettime(b, &g) == 0 && g.it_value.tv_sec > 900 && g.it_value.tv_sec <= 1000, "timer b: %ld s left", (long)g.it_value.tv_sec);
    CHECK(timer_gettime(c, &g) == 0 && g.it_interval.tv_nsec == 30000000, "timer c lost its id or interval");
    pass();
}
