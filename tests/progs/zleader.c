/* A zombie thread-group leader: a process whose main thread has exited
 * (SYS_exit with code 7, as pthread_exit does with 0) while two worker
 * threads run on, keeping state (their own and a shared counter under a
 * mutex, a TLS variable). After dump + restore the workers check their
 * state, their TIDs and the process's PID, and that the main thread is a
 * zombie again.
 *
 * Modes (argv[2]):
 *   self  - the test's process is that process; a worker writes the verdict.
 *   exit  - (default) the test's process forks that process as its child;
 *           after the checks both workers exit (SYS_exit), the last with
 *           code 5: the parent must reap the child with that code (the
 *           last thread's), and see the main thread's 7 in its
 *           /proc/PID/stat exit code meanwhile.
 *   kill  - as exit, but the parent kills the child (SIGKILL) once its
 *           workers have checked themselves, and must reap it killed. */
#include "harness.h"
#include <pthread.h>
#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static pid_t proc_pid;
static pid_t worker_tid[2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long count[2], total;
static __thread long tls;
static int self_mode, kill_mode;
static volatile int checked;

/* The state of thread `tid` of `pid` ('?': gone); its exit code (the
 * last field of its stat) in *code when given. */
static char state_code(pid_t pid, pid_t tid, long *code) {
    char path[96], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (code) {
        char *last = strrchr(buf, ' ');
        *code = last ? atol(last + 1) : -1;
    }
    return p && p[1] == ' ' ? p[2] : '?';
}

static char state_of(pid_t pid, pid_t tid) { return state_code(pid, tid, NULL); }

/* A failure of the child: its message for the parent, and exit_group(1). */
static void child_fail(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (self_mode) fail("%s", msg);
    put_file("cfail", msg);
    syscall(SYS_exit_group, 1);
}

#define CCHECK(cond, ...) do { if (!(cond)) child_fail(__VA_ARGS__); } while (0)

static int exists(const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", test_dir, name);
    return access(p, F_OK) == 0;
}

static void *worker(void *arg) {
    int id = (int)(long)arg;
    worker_tid[id] = (pid_t)syscall(SYS_gettid);
    tls = 1000 * (id + 1) + 7;
    const char *go = self_mode ? "go" : "cgo";
    while (!exists(go)) {
        pthread_mutex_lock(&lock);
        count[id]++;
        total++;
        pthread_mutex_unlock(&lock);
        if (id == 0 && count[0] > 10 && count[1] > 0 && state_of(proc_pid, proc_pid) == 'Z' &&
            !exists("cready")) {
            if (self_mode) ready();
            else put_file("cready", "ready\n");
        }
        sleep_ms(1);
    }
    CCHECK(tls == 1000 * (id + 1) + 7, "worker %d: TLS variable %ld", id, tls);
    CCHECK(getpid() == proc_pid, "worker %d: getpid %d, was %d", id, getpid(), proc_pid);
    pid_t tid = (pid_t)syscall(SYS_gettid);
    CCHECK(tid == worker_tid[id], "worker %d: TID %d, was %d", id, tid, worker_tid[id]);
    CCHECK(state_of(proc_pid, proc_pid) == 'Z', "the main thread is in state %c, not Z",
           state_of(proc_pid, proc_pid));
    /* The mutex works and the counters go on from where they were. */
    for (int i = 0; i < 50; i++) {
        pthread_mutex_lock(&lock);
        long before = count[id];
        count[id]++;
        total++;
        CCHECK(total == count[0] + count[1], "worker %d: total %ld != %ld + %ld", id, total,
               count[0], count[1]);
        CCHECK(count[id] == before + 1, "worker %d: counter raced", id);
        pthread_mutex_unlock(&lock);
        sleep_ms(1);
    }
    CCHECK(count[id] > 60, "worker %d: counter %ld", id, count[id]);
    int last = __atomic_add_fetch(&checked, 1, __ATOMIC_SEQ_CST) == 2;
    if (last) {
        if (self_mode) pass();
        put_file("cdone", "done\n");
    }
    if (kill_mode)
        for (;;) pause();
    if (!last) syscall(SYS_exit, 0);
    /* The last thread's exit ends the process, with its own code. */
    pid_t other = worker_tid[1 - id];
    for (int i = 0; i < 10000 && state_of(proc_pid, other) != '?'; i++) sleep_ms(1);
    syscall(SYS_exit, 5);
    return NULL;
}

/* The process whose main thread exits: starts the workers, exits with 7. */
static void zombie_leader_process(void) {
    proc_pid = getpid();
    pthread_t t;
    for (long i = 0; i < 2; i++)
        if (pthread_create(&t, NULL, worker, (void *)i) != 0) child_fail("pthread_create");
    syscall(SYS_exit, 7);
}

static int tids_of(pid_t pid, pid_t *out, int max) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    int n = 0;
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d)) && n < max)
        if (e->d_name[0] != '.') out[n++] = atoi(e->d_name);
    closedir(d);
    return n;
}

static int has(const pid_t *v, int n, pid_t x) {
    for (int i = 0; i < n; i++) if (v[i] == x) return 1;
    return 0;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    const char *mode = argc > 2 ? argv[2] : "exit";
    if (strcmp(mode, "self") == 0) {
        self_mode = 1;
        zombie_leader_process();
    }
    kill_mode = strcmp(mode, "kill") == 0;
    pid_t c = fork();
    if (c < 0) fail("fork");
    if (c == 0) zombie_leader_process();
    while (!exists("cready")) {
        if (exists("cfail")) fail("child failed before the dump");
        sleep_ms(1);
    }
    pid_t before[8], after[8];
    int nb = tids_of(c, before, 8);
    CHECK(nb == 3, "the child has %d threads, not 3", nb);
    ready();
    wait_go();
    int na = tids_of(c, after, 8);
    CHECK(na == nb, "the child has %d threads after restore, %d before", na, nb);
    for (int i = 0; i < nb; i++)
        CHECK(has(after, na, before[i]), "thread %d of the child is gone", before[i]);
    long code = -1;
    char st0 = state_code(c, c, &code);
    CHECK(st0 == 'Z', "the child's main thread is in state %c, not Z", st0);
    CHECK(code == 7 << 8, "the child's main thread's exit code is %#lx, not 0x700", code);
    put_file("cgo", "go\n");
    if (kill_mode) {
        for (int i = 0; i < 10000 && !exists("cdone") && !exists("cfail"); i++) sleep_ms(1);
        CHECK(exists("cdone"), "the child's workers did not finish their checks");
        kill(c, SIGKILL);
    }
    int st;
    pid_t w = waitpid(c, &st, 0);
    CHECK(w == c, "waitpid: %d (%s)", w, strerror(errno));
    if (exists("cfail")) {
        char p[4200], msg[512] = "";
        snprintf(p, sizeof p, "%s/cfail", test_dir);
        int fd = open(p, O_RDONLY);
        if (fd >= 0) { ssize_t n = read(fd, msg, sizeof msg - 1); if (n > 0) msg[n] = 0; close(fd); }
        fail("child: %s", msg);
    }
    if (kill_mode)
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child wait status %#x, not killed", st);
    else
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 5, "child wait status %#x, not exit 5", st);
    pass();
}
