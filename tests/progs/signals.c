/* Signals: handlers with flags and mask, an alternate signal stack, blocked
 * signals pending per thread and process-wide (with their siginfo), an
 * ignored signal, and an interval timer that keeps firing. */
#include "harness.h"
#include <signal.h>
#include <sys/time.h>

static char altstack[64 * 1024];
static volatile int usr1_hits, usr1_on_alt, usr2_hits;
static volatile long alarms;
static void on_usr1(int sig, siginfo_t *si, void *uc) {
    char here; (void)sig; (void)si; (void)uc;
    usr1_hits++;
    usr1_on_alt = &here >= altstack && &here < altstack + sizeof altstack;
}
static void on_usr2(int sig) { (void)sig; usr2_hits++; }
static void on_alarm(int sig) { (void)sig; alarms++; }

int main(int argc, char **argv) {
    setup(argc, argv);
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
    CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");
    struct sigaction sa = {0};
    sa.sa_sigaction = on_usr1; sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask); sigaddset(&sa.sa_mask, SIGHUP);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction usr1");
    signal(SIGUSR2, on_usr2);
    signal(SIGTERM, SIG_IGN);
    signal(SIGALRM, on_alarm);
    sigset_t block; sigemptyset(&block); sigaddset(&block, SIGUSR2); sigaddset(&block, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &block, NULL);
    raise(SIGUSR2);                                   /* pending on this thread */
    union sigval v = { .sival_int = 42 };
    CHECK(sigqueue(getpid(), SIGRTMIN, v) == 0, "sigqueue"); /* process-wide, with a value */
    struct itimerval it = { {0, 20000}, {0, 20000} };
    setitimer(ITIMER_REAL, &it, NULL);
    /* Keep SIGALRM blocked until after the restore, so that at the dump it is
     * pending and the periodic timer is waiting for its dequeue to re-arm. */
    sigset_t alrm; sigemptyset(&alrm); sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    sleep_ms(50);
    ready();
    wait_go();
    struct sigaction now;
    sigaction(SIGUSR1, NULL, &now);
    CHECK(now.sa_sigaction == on_usr1, "SIGUSR1 handler changed");
    CHECK((now.sa_flags & (SA_SIGINFO | SA_RESTART | SA_ONSTACK)) == (SA_SIGINFO | SA_RESTART | SA_ONSTACK), "SIGUSR1 flags %#x", now.sa_flags);
    CHECK(sigismember(&now.sa_mask, SIGHUP), "SIGUSR1 handler mask lost SIGHUP");
    sigaction(SIGTERM, NULL, &now);
    CHECK(now.sa_handler == SIG_IGN, "SIGTERM no longer ignored");
    sigset_t pend; sigpending(&pend);
    CHECK(sigismember(&pend, SIGUSR2), "pending SIGUSR2 lost");
    CHECK(sigismember(&pend, SIGRTMIN), "pending SIGRTMIN lost");
    sigset_t cur; sigprocmask(SIG_BLOCK, NULL, &cur);
    CHECK(sigismember(&cur, SIGUSR2) && sigismember(&cur, SIGRTMIN) && sigismember(&cur, SIGALRM), "blocked mask lost");
    struct itimerval g; getitimer(ITIMER_REAL, &g);
    CHECK(g.it_interval.tv_usec == 20000, "itimer interval %ld", (long)g.it_interval.tv_usec);
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);
    long a0 = alarms; sleep_ms(200);
    CHECK(alarms > a0, "the interval timer stopped firing");
    stack_t cs; sigaltstack(NULL, &cs);
    CHECK(cs.ss_sp == altstack && cs.ss_size == sizeof altstack, "sigaltstack changed");
    siginfo_t si; sigset_t rt; sigemptyset(&rt); sigaddset(&rt, SIGRTMIN);
    struct timespec zero = {0, 0};
    CHECK(sigtimedwait(&rt, &si, &zero) == SIGRTMIN, "SIGRTMIN not deliverable");
    CHECK(si.si_value.sival_int == 42 && si.si_pid == getpid(), "SIGRTMIN siginfo value %d pid %d", si.si_value.sival_int, si.si_pid);
    sigset_t u2; sigemptyset(&u2); sigaddset(&u2, SIGUSR2);
    sigprocmask(SIG_UNBLOCK, &u2, NULL);
    CHECK(usr2_hits == 1, "SIGUSR2 handler ran %d times", usr2_hits);
    raise(SIGUSR1);
    CHECK(usr1_hits == 1 && usr1_on_alt, "SIGUSR1 handler hits %d, on altstack %d", usr1_hits, usr1_on_alt);
    pass();
}
