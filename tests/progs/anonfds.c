/* Anonymous-inode descriptors: an eventfd holding 5 (non-blocking,
 * close-on-exec) and a semaphore eventfd holding 3; a periodic timerfd
 * (CLOCK_MONOTONIC, 20 ms) that keeps ticking; a one-shot timerfd 1000 s
 * away and an absolute CLOCK_REALTIME one, whose remaining time is kept; a
 * one-shot timerfd that fired and was not read; a signalfd for a blocked
 * SIGUSR1; an inotify instance with watches 1, 3 and 4 (2 was removed) on
 * directories of the test dir; an epoll instance watching the eventfd. */
#include "harness.h"
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

#define SEC 1000000000LL

static long long ts_ns(struct timespec t) { return t.tv_sec * SEC + t.tv_nsec; }

static void sub(char *out, const char *name) { snprintf(out, 4200, "%s/%s", test_dir, name); }

/* Reads one event from inotify fd `in` (waiting up to 2 s). */
static struct inotify_event *next_event(int in, char *buf, size_t len) {
    struct pollfd p = { in, POLLIN, 0 };
    CHECK(poll(&p, 1, 2000) == 1, "no inotify event within 2 s");
    ssize_t n = read(in, buf, len);
    CHECK(n >= (ssize_t)sizeof(struct inotify_event), "inotify read returned %zd (errno %d)", n, errno);
    return (struct inotify_event *)buf;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    char watched[4200], other1[4200], other2[4200], other3[4200], p[4300];
    sub(watched, "watched"); sub(other1, "other1"); sub(other2, "other2"); sub(other3, "other3");
    CHECK(mkdir(watched, 0755) == 0 && mkdir(other1, 0755) == 0 && mkdir(other2, 0755) == 0 && mkdir(other3, 0755) == 0, "mkdir");

    int efd = eventfd(5, EFD_NONBLOCK | EFD_CLOEXEC);
    int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    CHECK(efd >= 0 && sem >= 0, "eventfd");

    int tper = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec per = { { 0, 20000000 }, { 0, 20000000 } };
    CHECK(tper >= 0 && timerfd_settime(tper, 0, &per, NULL) == 0, "periodic timerfd");
    uint64_t ticks = 0;
    CHECK(read(tper, &ticks, 8) == 8 && ticks >= 1, "periodic timerfd does not tick");

    int tfar = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec far = { { 0, 0 }, { 1000, 0 } };
    CHECK(tfar >= 0 && timerfd_settime(tfar, 0, &far, NULL) == 0, "one-shot timerfd");

    int tabs = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    struct timespec now; clock_gettime(CLOCK_REALTIME, &now);
    struct itimerspec abs_ = { { 0, 0 }, { now.tv_sec + 1000, now.tv_nsec } };
    CHECK(tabs >= 0 && timerfd_settime(tabs, TFD_TIMER_ABSTIME, &abs_, NULL) == 0, "absolute timerfd");

    int tfired = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec soon = { { 0, 0 }, { 0, 1000000 } };
    CHECK(tfired >= 0 && timerfd_settime(tfired, 0, &soon, NULL) == 0, "fired timerfd");

    sigset_t usr1; sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &usr1, NULL) == 0, "sigprocmask");
    int sfd = signalfd(-1, &usr1, SFD_NONBLOCK);
    CHECK(sfd >= 0, "signalfd");

    int in = inotify_init1(IN_CLOEXEC);
    CHECK(in >= 0, "inotify_init1");
    int wd1 = inotify_add_watch(in, watched, IN_CREATE | IN_DELETE);
    int wd2 = inotify_add_watch(in, other1, IN_CREATE);
    int wd3 = inotify_add_watch(in, other2, IN_ALL_EVENTS);
    CHECK(wd1 == 1 && wd2 == 2 && wd3 == 3, "watch numbers %d %d %d", wd1, wd2, wd3);
    CHECK(inotify_rm_watch(in, wd2) == 0, "inotify_rm_watch");
    int wd4 = inotify_add_watch(in, other3, IN_CREATE | IN_ONLYDIR);
    CHECK(wd4 == 4, "fourth watch number %d", wd4);
    char evbuf[4096] __attribute__((aligned(8)));
    struct inotify_event *ev = next_event(in, evbuf, sizeof evbuf); /* IN_IGNORED of wd 2 */
    CHECK(ev->wd == wd2 && (ev->mask & IN_IGNORED), "expected IN_IGNORED of wd 2, got wd %d mask %x", ev->wd, ev->mask);

    int ep = epoll_create1(0);
    struct epoll_event eev = { .events = EPOLLIN, .data.u64 = 0xabc };
    CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, efd, &eev) == 0, "epoll");

    sleep_ms(10); /* tfired expires */
    ready();
    wait_go();

    /* epoll sees the eventfd readable, then the eventfd holds 5. */
    struct epoll_event got[2];
    int n = epoll_wait(ep, got, 2, 0);
    CHECK(n == 1 && got[0].data.u64 == 0xabc && (got[0].events & EPOLLIN), "epoll_wait: %d events", n);
    uint64_t v = 0;
    CHECK(read(efd, &v, 8) == 8 && v == 5, "eventfd holds %llu", (unsigned long long)v);
    CHECK(read(efd, &v, 8) < 0 && errno == EAGAIN, "eventfd not empty or blocking");
    CHECK(epoll_wait(ep, got, 2, 0) == 0, "epoll still reports the eventfd");
    v = 2; CHECK(write(efd, &v, 8) == 8, "eventfd write");
    CHECK(epoll_wait(ep, got, 2, 0) == 1, "epoll misses the eventfd write");
    CHECK((fcntl(efd, F_GETFD) & FD_CLOEXEC) && (fcntl(efd, F_GETFL) & O_NONBLOCK), "eventfd flags lost");

    /* The semaphore eventfd hands out 1 three times. */
    for (int i = 0; i < 3; i++) CHECK(read(sem, &v, 8) == 8 && v == 1, "semaphore read %d gave %llu", i, (unsigned long long)v);
    CHECK(read(sem, &v, 8) < 0 && errno == EAGAIN, "semaphore eventfd not empty");

    /* The periodic timer keeps ticking, every 20 ms. */
    struct itimerspec cur;
    CHECK(timerfd_gettime(tper, &cur) == 0 && ts_ns(cur.it_interval) == 20000000, "periodic interval %lld", ts_ns(cur.it_interval));
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(read(tper, &ticks, 8) == 8 && ticks >= 1, "periodic timer: no tick");
    uint64_t total = 0;
    for (int i = 0; i < 5; i++) {
        struct pollfd pf = { tper, POLLIN, 0 };
        CHECK(poll(&pf, 1, 2000) == 1, "periodic timer stopped ticking");
        CHECK(read(tper, &ticks, 8) == 8 && ticks >= 1, "periodic timer read");
        total += ticks;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long took = ts_ns(t1) - ts_ns(t0);
    CHECK(total >= 5 && took >= 60000000 && took < 2 * SEC, "5 periods took %lld ns (%llu ticks)", took, (unsigned long long)total);

    /* The far one-shot did not fire and has about 1000 s left. */
    CHECK(read(tfar, &v, 8) < 0 && errno == EAGAIN, "the 1000 s timer fired");
    CHECK(timerfd_gettime(tfar, &cur) == 0, "timerfd_gettime");
    CHECK(cur.it_value.tv_sec > 900 && ts_ns(cur.it_value) <= 1000 * SEC && ts_ns(cur.it_interval) == 0,
          "the 1000 s timer has %lld ns left", ts_ns(cur.it_value));
    CHECK(read(tabs, &v, 8) < 0 && errno == EAGAIN, "the absolute timer fired");
    CHECK(timerfd_gettime(tabs, &cur) == 0 && cur.it_value.tv_sec > 900 && ts_ns(cur.it_value) <= 1000 * SEC,
          "the absolute timer has %lld ns left", ts_ns(cur.it_value));
    CHECK(fcntl(tabs, F_GETFD) & FD_CLOEXEC, "timerfd close-on-exec lost");

    /* The expiry of the fired timer is still there to read, once. */
    CHECK(read(tfired, &v, 8) == 8 && v == 1, "fired timer: read %llu", (unsigned long long)v);
    CHECK(read(tfired, &v, 8) < 0 && errno == EAGAIN, "fired timer read twice");

    /* signalfd: nothing pending, then a SIGUSR1 sent now. */
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) < 0 && errno == EAGAIN, "signalfd has something pending");
    CHECK(kill(getpid(), SIGUSR1) == 0, "kill");
    CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1 && si.ssi_pid == (uint32_t)getpid(),
          "signalfd: signo %u pid %u", si.ssi_signo, si.ssi_pid);

    /* inotify: no stale events; the watches keep their numbers. */
    struct pollfd pi = { in, POLLIN, 0 };
    CHECK(poll(&pi, 1, 0) == 0, "inotify has events before any change");
    snprintf(p, sizeof p, "%s/newfile", watched);
    int nf = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644); CHECK(nf >= 0, "create"); close(nf);
    ev = next_event(in, evbuf, sizeof evbuf);
    CHECK(ev->wd == wd1 && (ev->mask & IN_CREATE) && ev->len > 0 && strcmp(ev->name, "newfile") == 0,
          "event wd %d mask %x name %s", ev->wd, ev->mask, ev->len ? ev->name : "");
    snprintf(p, sizeof p, "%s/sub", other3);
    CHECK(mkdir(p, 0755) == 0, "mkdir other3/sub");
    ev = next_event(in, evbuf, sizeof evbuf);
    CHECK(ev->wd == wd4 && (ev->mask & IN_CREATE) && (ev->mask & IN_ISDIR) && strcmp(ev->name, "sub") == 0,
          "event wd %d mask %x", ev->wd, ev->mask);
    snprintf(p, sizeof p, "%s/x", other1);
    nf = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644); CHECK(nf >= 0, "create in other1"); close(nf);
    CHECK(poll(&pi, 1, 50) == 0, "the removed watch came back");
    CHECK(fcntl(in, F_GETFD) & FD_CLOEXEC, "inotify close-on-exec lost");
    CHECK(!(fcntl(in, F_GETFL) & O_NONBLOCK), "inotify became non-blocking");
    int wd5 = inotify_add_watch(in, other1, IN_CREATE);
    CHECK(wd5 == 5, "a new watch got number %d", wd5);
    pass();
}
