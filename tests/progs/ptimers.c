/* POSIX timers: a periodic SIGEV_SIGNAL timer carrying a value, a one-shot
 * SIGEV_NONE timer far in the future, and a periodic SIGEV_THREAD_ID timer;
 * after restore they keep their ids, keep firing, and keep their time. A
 * fourth timer (60 s period) overran 3 times before its signal was taken:
 * timer_getoverrun() still says 3 after restore, with the same time left. */
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
    /* Timer d: started 3.5 periods ago, so its first signal reports 3 overruns. */
    timer_t d;
    struct sigevent ed = {0};
    ed.sigev_notify = SIGEV_SIGNAL; ed.sigev_signo = SIGRTMIN + 1;
    sigset_t rt; sigemptyset(&rt); sigaddset(&rt, SIGRTMIN + 1);
    sigprocmask(SIG_BLOCK, &rt, NULL);
    CHECK(timer_create(CLOCK_MONOTONIC, &ed, &d) == 0, "timer d");
    struct timespec now; clock_gettime(CLOCK_MONOTONIC, &now);
    struct itimerspec pd = { {60, 0}, {now.tv_sec - 210, now.tv_nsec} };
    CHECK(timer_settime(d, TIMER_ABSTIME, &pd, NULL) == 0, "arming timer d");
    siginfo_t si; struct timespec wait = {5, 0};
    CHECK(sigtimedwait(&rt, &si, &wait) == SIGRTMIN + 1, "timer d did not fire");
    CHECK(si.si_overrun == 3 && timer_getoverrun(d) == 3, "timer d overran %d/%d times, not 3", si.si_overrun, timer_getoverrun(d));
    struct itimerspec before; timer_gettime(d, &before);
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
    CHECK(timer_getoverrun(d) == 3, "timer d: overrun %d after restore, not 3", timer_getoverrun(d));
    CHECK(timer_gettime(d, &g) == 0 && g.it_interval.tv_sec == 60, "timer d lost its interval");
    CHECK(g.it_value.tv_sec > 0 && g.it_value.tv_sec <= before.it_value.tv_sec, "timer d: %ld s left, %ld before the dump", (long)g.it_value.tv_sec, (long)before.it_value.tv_sec);
    pass();
}
