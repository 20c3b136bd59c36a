/* Scheduling per thread: policy (SCHED_OTHER, BATCH, IDLE, FIFO, RR), real-
 * time priority, nice value (also the one a real-time thread keeps for a
 * return to SCHED_OTHER), a custom time slice, SCHED_RESET_ON_FORK, CPU
 * affinity and I/O priority. Each thread sets its own and checks it after restore. */
#include "harness.h"
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>

struct attr {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t prio;
    uint64_t runtime, deadline, period;
};
#define RESET_ON_FORK 1
#define IOPRIO(cls, lvl) (((cls) << 13) | (lvl))

struct want {
    const char *name;
    uint32_t policy, prio;
    int nice, reset, cpu, ioprio;
    uint64_t slice;
    char verdict[256];
};

static int ncpu;
static struct want wants[5] = {
    { "main", SCHED_OTHER, 0, 5, 0, -1, IOPRIO(2, 6), 2000000, "" },
    { "batch", SCHED_BATCH, 0, -3, 0, 0, IOPRIO(3, 0), 0, "" },
    { "fifo", SCHED_FIFO, 10, 7, 1, -1, IOPRIO(1, 2), 0, "" },
    { "idle", SCHED_IDLE, 0, 2, 0, -1, IOPRIO(2, 1), 0, "" },
    { "rr", SCHED_RR, 5, 0, 0, 0, IOPRIO(2, 0), 0, "" },
};
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int set_count, go;

static int sched_setattr_(struct attr *a) { return syscall(SYS_sched_setattr, 0, a, 0); }

static void setup_self(struct want *w) {
    pid_t tid = gettid();
    if (w->cpu >= 0) {
        cpu_set_t s; CPU_ZERO(&s); CPU_SET(w->cpu, &s);
        if (sched_setaffinity(0, sizeof s, &s)) fail("%s: setaffinity", w->name);
    }
    if (syscall(SYS_ioprio_set, 1, tid, w->ioprio)) fail("%s: ioprio_set: %s", w->name, strerror(errno));
    /* the nice value first (a fair policy sets it), then the policy */
    struct attr a = { sizeof a, SCHED_OTHER, 0, w->nice, 0, 0, 0, 0 };
    if (sched_setattr_(&a)) fail("%s: nice: %s", w->name, strerror(errno));
    struct attr b = { sizeof b, w->policy, w->reset ? RESET_ON_FORK : 0, w->nice, w->prio, w->slice, 0, 0 };
    if (sched_setattr_(&b)) fail("%s: policy: %s", w->name, strerror(errno));
}

static void check_self(struct want *w) {
    pid_t tid = gettid();
    struct attr a; memset(&a, 0, sizeof a);
    char *v = w->verdict;
    if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0)) { snprintf(v, 256, "%s: getattr", w->name); return; }
    int nice = getpriority(PRIO_PROCESS, tid);
    cpu_set_t s; sched_getaffinity(0, sizeof s, &s);
    int io = syscall(SYS_ioprio_get, 1, tid);
    if (a.policy != w->policy) snprintf(v, 256, "%s: policy %u, not %u", w->name, a.policy, w->policy);
    else if (a.prio != w->prio) snprintf(v, 256, "%s: priority %u, not %u", w->name, a.prio, w->prio);
    else if (nice != w->nice) snprintf(v, 256, "%s: nice %d, not %d", w->name, nice, w->nice);
    else if (!!(a.flags & RESET_ON_FORK) != w->reset) snprintf(v, 256, "%s: reset-on-fork %d", w->name, (int)(a.flags & RESET_ON_FORK));
    else if (w->cpu >= 0 && (CPU_COUNT(&s) != 1 || !CPU_ISSET(w->cpu, &s))) snprintf(v, 256, "%s: affinity has %d CPUs, not only %d", w->name, CPU_COUNT(&s), w->cpu);
    else if (w->cpu < 0 && CPU_COUNT(&s) != ncpu) snprintf(v, 256, "%s: affinity has %d CPUs, not %d", w->name, CPU_COUNT(&s), ncpu);
    else if (io != w->ioprio) snprintf(v, 256, "%s: ioprio %#x, not %#x", w->name, io, w->ioprio);
    else if (w->slice && a.runtime != w->slice) snprintf(v, 256, "%s: time slice %lu, not %lu", w->name, (unsigned long)a.runtime, (unsigned long)w->slice);
    else snprintf(v, 256, "ok");
}

static void *thread(void *arg) {
    struct want *w = arg;
    setup_self(w);
    pthread_mutex_lock(&mu);
    set_count++;
    pthread_cond_broadcast(&cv);
    while (!go) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    check_self(w);
    return NULL;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    wants[0].cpu = ncpu - 1;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, thread, &wants[i + 1]);
    setup_self(&wants[0]);
    pthread_mutex_lock(&mu);
    while (set_count < 4) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    ready();
    wait_go();
    pthread_mutex_lock(&mu);
    go = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    check_self(&wants[0]);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 5; i++) CHECK(strcmp(wants[i].verdict, "ok") == 0, "%s", wants[i].verdict);
    pass();
}
