/* A thread under a seccomp filter whose getppid goes to a user-space
 * listener (SECCOMP_RET_USER_NOTIF, SECCOMP_FILTER_FLAG_NEW_LISTENER): dump
 * must refuse it, naming the thread (its TID is in DIR/tid), and leave the
 * process as it was. After go, main serves one notification: the thread's
 * getppid must return what main answers. */
#include "harness.h"
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static volatile int listener = -1, tid;
static volatile long answer = -2;

static void *watched(void *a) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    tid = gettid();
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) { listener = -errno; return a; }
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    listener = fd < 0 ? -errno : fd;
    wait_go();
    answer = syscall(SYS_getppid);
    return a;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, watched, NULL) == 0, "thread");
    while (listener == -1) sleep_ms(1);
    CHECK(listener >= 0, "seccomp with a listener: %s", strerror(-listener));
    char s[32];
    snprintf(s, sizeof s, "%d\n", tid);
    put_file("tid", s);
    ready();
    wait_go();
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    struct pollfd p = { listener, POLLIN, 0 };
    CHECK(poll(&p, 1, 5000) == 1, "no notification from the watched thread");
    memset(&req, 0, sizeof req);
    CHECK(ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) == 0, "NOTIF_RECV: %s", strerror(errno));
    CHECK(req.data.nr == SYS_getppid, "notified of syscall %d", req.data.nr);
    memset(&resp, 0, sizeof resp);
    resp.id = req.id;
    resp.val = 4242;
    CHECK(ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0, "NOTIF_SEND: %s", strerror(errno));
    pthread_join(t, NULL);
    CHECK(answer == 4242, "getppid under the listener returned %ld", answer);
    pass();
}
