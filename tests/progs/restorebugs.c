/* Images that dump fine but whose restore used to fail; one case per mode
 * (the argument after DIR):
 *   epoll     - one FIFO opened several times plus dups, all in one epoll
 *               set (one description under two fd numbers, fd 0, a watch
 *               whose fd was closed and its number reused);
 *   fdnums    - files and directories dup2'ed to fds 3..10 and 1000, and a
 *               cwd elsewhere, in a process and its child (other files at
 *               the same numbers, a shared file mapping, a socket bound to
 *               a relative path): no fd the restore uses may land on them;
 *   opath     - O_PATH descriptors of a file, a directory and a symlink
 *               (O_PATH|O_NOFOLLOW);
 *   fifosock  - a unix socket bound to a path, the socket file removed and
 *               a FIFO made at that path, both open;
 *   dgramgone - a datagram unix socket whose bound file was removed;
 *   procfiles - a child holding /proc/self/status, /proc/<its pid>/stat and
 *               the /proc/self/fd directory;
 *   zombies   - a living child with a zombie child, zombies at two levels;
 *   procother - /proc/1/stat open: the dump refuses it (another process's);
 *   zombielead - a zombie leading the process group of a living process;
 *   zombiesession - a zombie that led the session of a living process
 *               re-parented to the root (in another session): refused;
 *   zombiegroup - a zombie that had joined a sibling's group: still in it.
 * After restore each checks its own state. */
#include "harness.h"
#include <dirent.h>
#include <signal.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void tpath(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", test_dir, name); }

static socklen_t path_addr(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", test_dir, name);
    CHECK(n < (int)sizeof a->sun_path, "test directory path too long for a socket");
    return offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1;
}

static void same_inode(int fd, const struct stat *want, const char *what) {
    struct stat st;
    CHECK(fstat(fd, &st) == 0, "%s: fstat fd %d: errno %d", what, fd, errno);
    CHECK(st.st_ino == want->st_ino && st.st_dev == want->st_dev, "%s: fd %d is another file", what, fd);
}

static int epoll_case(void) {
    char p[4200]; tpath(p, sizeof p, "fifo");
    CHECK(mkfifo(p, 0600) == 0, "mkfifo");
    int a = open(p, O_RDWR | O_NONBLOCK), b = open(p, O_RDWR | O_NONBLOCK);
    int c = dup(a);
    int ep = epoll_create1(0);
    /* stdin is the FIFO too, watched under 0 (the lowest number: what a
     * restore's own new fds get first). */
    CHECK(dup2(b, 0) == 0, "dup2 0");
    int fds[4] = { a, b, c, 0 };
    for (int i = 0; i < 4; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 100 + i };
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) == 0, "epoll add %d: errno %d", fds[i], errno);
    }
    /* A watch whose fd was closed (its description kept open by a dup),
     * its number then reused by another open of the same FIFO, watched too:
     * two watches under one number, of two descriptions. */
    int d = open(p, O_RDWR | O_NONBLOCK);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 104 };
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, d, &ev) == 0, "epoll add d");
    int keep = dup(d);
    close(d);
    int d2 = open(p, O_RDWR | O_NONBLOCK);
    CHECK(d2 == d, "fd %d not reused (%d)", d, d2);
    ev.data.u64 = 105;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, d2, &ev) == 0, "epoll add d2: errno %d", errno);
    ready();
    wait_go();
    ev.data.u64 = 0;
    for (int i = 0; i < 4; i++) {
        errno = 0;
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0 && errno == EEXIST, "fd %d not in the set (errno %d)", fds[i], errno);
    }
    struct epoll_event got[8];
    CHECK(epoll_wait(ep, got, 8, 0) == 0, "events before any write");
    CHECK(write(b, "x", 1) == 1, "write");
    int n = epoll_wait(ep, got, 8, 100);
    CHECK(n == 6, "%d events, want 6", n);
    unsigned seen = 0;
    for (int i = 0; i < n; i++) seen |= 1u << (got[i].data.u64 - 100);
    CHECK(seen == 0x3f, "events' data %#x", seen);
    /* Each watch is keyed by its own fd number: removing one leaves the others. */
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL) == 0, "del dup: errno %d", errno);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, a, NULL) == 0, "del a: errno %d", errno);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL) == 0, "del 0: errno %d", errno);
    /* Under d's number, the file there now (d2) is the one removed. */
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, d2, NULL) == 0, "del d2: errno %d", errno);
    n = epoll_wait(ep, got, 8, 100);
    seen = 0;
    for (int i = 0; i < n; i++) seen |= 1u << (got[i].data.u64 - 100);
    CHECK(n == 2 && seen == 0x12, "%d events after del (%#x)", n, seen);
    /* The watch of the closed fd goes with its description. */
    close(keep);
    n = epoll_wait(ep, got, 8, 100);
    CHECK(n == 1 && got[0].data.u64 == 101, "%d events after closing the dup", n);
    pass();
    return 0;
}

/* Puts files (odd numbers) and directories (even) named after `tag` at
 * fds 3..10 and 1000; records what each is. */
static const int targets[] = { 3, 4, 5, 6, 7, 8, 9, 10, 1000 };
#define NT 9
static void set_fds(const char *tag, struct stat *want) {
    for (int i = 0; i < NT; i++) {
        int t = targets[i], fd;
        char p[4300];
        if (t % 2) {
            snprintf(p, sizeof p, "%s/%s-f%d", test_dir, tag, t);
            fd = open(p, O_RDWR | O_CREAT, 0600);
            CHECK(fd >= 0 && write(fd, p, strlen(p)) > 0, "file %d", t);
        } else {
            snprintf(p, sizeof p, "%s/%s-d%d", test_dir, tag, t);
            CHECK(mkdir(p, 0700) == 0, "mkdir %d", t);
            fd = open(p, O_RDONLY | O_DIRECTORY);
        }
        CHECK(fd >= 0, "open %s", p);
        if (fd != t) { CHECK(dup2(fd, t + 2000) == t + 2000, "dup2"); close(fd); }
    }
    for (int i = 0; i < NT; i++) {
        int t = targets[i];
        if (fcntl(t + 2000, F_GETFD) >= 0) { CHECK(dup2(t + 2000, t) == t, "dup2 %d", t); close(t + 2000); }
        CHECK(fstat(t, &want[i]) == 0, "fstat %d", t);
    }
}

/* Checks the fds of set_fds, and that nothing else is open above 2 but
 * `also`, `also2` (-1: none). Returns 0 or writes why into msg. */
static int check_fds(const struct stat *want, int also, int also2, char *msg, size_t n) {
    for (int i = 0; i < NT; i++) {
        struct stat st;
        if (fstat(targets[i], &st) != 0 || st.st_ino != want[i].st_ino || st.st_dev != want[i].st_dev) {
            snprintf(msg, n, "fd %d is not its file", targets[i]);
            return 1;
        }
    }
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *e;
    int extra = 0;
    while ((e = readdir(dir))) {
        int k = atoi(e->d_name);
        if (e->d_name[0] == '.' || k <= 2 || k == dirfd(dir) || k == also || k == also2) continue;
        int ours = 0;
        for (int i = 0; i < NT; i++) ours |= k == targets[i];
        if (!ours) extra = k;
    }
    closedir(dir);
    if (extra) { snprintf(msg, n, "fd %d open after restore", extra); return 1; }
    return 0;
}

static int fdnums_case(void) {
    char d[4200]; tpath(d, sizeof d, "elsewhere");
    CHECK(mkdir(d, 0700) == 0, "mkdir");
    struct stat want[NT], cwd;
    set_fds("parent", want);
    int res[2]; CHECK(pipe2(res, 0) == 0, "pipe");
    CHECK(dup2(res[0], 500) == 500 && dup2(res[1], 501) == 501, "dup2 pipe");
    close(res[0]); close(res[1]);
    CHECK(chdir(d) == 0, "chdir");
    /* A child with other files at the same numbers, its own cwd, a shared
     * file mapping of a file it has not open and a socket bound to a
     * relative path (the restore enters its cwd for it). */
    pid_t child = fork();
    if (child == 0) {
        close(500);
        struct stat cw[NT];
        for (int i = 0; i < NT; i++) close(targets[i]);
        set_fds("child", cw);
        char sub[4300]; snprintf(sub, sizeof sub, "%s/childcwd", test_dir);
        if (mkdir(sub, 0700) != 0 || chdir(sub) != 0) _exit(7);
        int m = open("mapped", O_RDWR | O_CREAT, 0600);
        if (m < 0 || ftruncate(m, 4096) != 0) _exit(7);
        char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
        if (map == MAP_FAILED) _exit(7);
        close(m);
        memcpy(map, "mapped", 6);
        int s = socket(AF_UNIX, SOCK_DGRAM, 0);
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        strcpy(a.sun_path, "rel.sock");
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) _exit(7);
        if (dup2(s, 600) != 600) _exit(7);
        close(s);
        struct stat cwdst; if (stat(".", &cwdst) != 0) _exit(7);
        if (write(501, "r", 1) != 1) _exit(7);
        pause();
        char msg[256] = "ok";
        struct stat now;
        if (check_fds(cw, 600, 501, msg, sizeof msg) == 0) {
            if (stat(".", &now) != 0 || now.st_ino != cwdst.st_ino) snprintf(msg, sizeof msg, "child cwd changed");
            else if (memcmp(map, "mapped", 6) != 0) snprintf(msg, sizeof msg, "mapping");
            struct sockaddr_un g; socklen_t gl = sizeof g;
            if (getsockname(600, (struct sockaddr *)&g, &gl) != 0 || strcmp(g.sun_path, "rel.sock") != 0) snprintf(msg, sizeof msg, "child socket name");
        }
        if (write(501, msg, strlen(msg)) < 0) _exit(8);
        _exit(0);
    }
    close(501);
    char c;
    CHECK(read(500, &c, 1) == 1, "child not ready");
    CHECK(stat(".", &cwd) == 0, "stat cwd");
    ready();
    wait_go();
    char msg[256] = "";
    CHECK(check_fds(want, 500, -1, msg, sizeof msg) == 0, "%s", msg);
    struct stat now;
    CHECK(stat(".", &now) == 0 && now.st_ino == cwd.st_ino, "cwd changed");
    kill(child, SIGUSR1);
    ssize_t n = read(500, msg, sizeof msg - 1);
    CHECK(n > 0, "child gave no answer");
    msg[n] = 0;
    CHECK(strcmp(msg, "ok") == 0, "child: %s", msg);
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    pass();
    return 0;
}

static int opath_case(void) {
    char f[4200], dd[4200], l[4200];
    tpath(f, sizeof f, "plain"); tpath(dd, sizeof dd, "dir"); tpath(l, sizeof l, "link");
    int t = open(f, O_WRONLY | O_CREAT, 0600); close(t);
    CHECK(mkdir(dd, 0700) == 0, "mkdir");
    CHECK(symlink("plain", l) == 0, "symlink");
    int pf = open(f, O_PATH), pd = open(dd, O_PATH | O_DIRECTORY | O_CLOEXEC), pl = open(l, O_PATH | O_NOFOLLOW);
    CHECK(pf >= 0 && pd >= 0 && pl >= 0, "O_PATH opens");
    struct stat sf, sd, sl;
    CHECK(fstat(pf, &sf) == 0 && fstat(pd, &sd) == 0 && fstat(pl, &sl) == 0, "fstat");
    CHECK(S_ISLNK(sl.st_mode), "symlink fd is not a symlink");
    ready();
    wait_go();
    int fds[3] = { pf, pd, pl };
    const char *paths[3] = { f, dd, l };
    struct stat *want[3] = { &sf, &sd, &sl };
    for (int i = 0; i < 3; i++) {
        same_inode(fds[i], want[i], "O_PATH");
        int fl = fcntl(fds[i], F_GETFL);
        CHECK(fl >= 0 && (fl & O_PATH), "fd %d flags %#x: not O_PATH", fds[i], fl);
        char lp[64], target[4200];
        snprintf(lp, sizeof lp, "/proc/self/fd/%d", fds[i]);
        ssize_t n = readlink(lp, target, sizeof target - 1);
        CHECK(n > 0, "readlink %s", lp);
        target[n] = 0;
        CHECK(strcmp(target, paths[i]) == 0, "fd %d names %s, want %s", fds[i], target, paths[i]);
        char buf[4];
        CHECK(read(fds[i], buf, 1) < 0 && errno == EBADF, "fd %d readable: not O_PATH", fds[i]);
    }
    CHECK((fcntl(pd, F_GETFD) & FD_CLOEXEC) && !(fcntl(pf, F_GETFD) & FD_CLOEXEC), "close-on-exec flags");
    /* The directory fd still works as a base for *at calls. */
    CHECK(faccessat(pd, ".", F_OK, 0) == 0, "faccessat on the dir");
    char buf[64];
    ssize_t n = readlinkat(pl, "", buf, sizeof buf);
    CHECK(n == 5 && memcmp(buf, "plain", 5) == 0, "readlinkat of the symlink fd: %zd", n);
    pass();
    return 0;
}

static int fifosock_case(void) {
    struct sockaddr_un a; socklen_t len = path_addr(&a, "sock");
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(bind(s, (struct sockaddr *)&a, len) == 0 && listen(s, 4) == 0, "bind/listen");
    CHECK(unlink(a.sun_path) == 0, "unlink");
    CHECK(mkfifo(a.sun_path, 0600) == 0, "mkfifo");
    int f = open(a.sun_path, O_RDWR | O_NONBLOCK);
    CHECK(f >= 0 && write(f, "abc", 3) == 3, "fifo");
    struct stat fst; CHECK(fstat(f, &fst) == 0, "fstat");
    ready();
    wait_go();
    struct sockaddr_un got; socklen_t gl = sizeof got;
    CHECK(getsockname(s, (struct sockaddr *)&got, &gl) == 0 && gl == len && strcmp(got.sun_path, a.sun_path) == 0, "socket name");
    struct stat st;
    CHECK(stat(a.sun_path, &st) == 0 && S_ISFIFO(st.st_mode) && st.st_ino == fst.st_ino, "the FIFO is not at its path");
    same_inode(f, &fst, "fifo");
    char buf[8];
    CHECK(read(f, buf, 8) == 3 && memcmp(buf, "abc", 3) == 0, "fifo data");
    int l; socklen_t ll = sizeof l;
    CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &l, &ll) == 0 && l, "not listening");
    pass();
    return 0;
}

static int dgramgone_case(void) {
    struct sockaddr_un a; socklen_t len = path_addr(&a, "dgram");
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(bind(s, (struct sockaddr *)&a, len) == 0, "bind");
    int c = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(sendto(c, "hello", 5, 0, (struct sockaddr *)&a, len) == 5, "send");
    CHECK(unlink(a.sun_path) == 0, "unlink");
    ready();
    wait_go();
    struct sockaddr_un got; socklen_t gl = sizeof got;
    CHECK(getsockname(s, (struct sockaddr *)&got, &gl) == 0, "getsockname");
    CHECK(gl == len && strcmp(got.sun_path, a.sun_path) == 0, "socket name %s", got.sun_path);
    CHECK(access(a.sun_path, F_OK) != 0, "the socket file is back");
    char buf[8];
    CHECK(recv(s, buf, 8, MSG_DONTWAIT) == 5 && memcmp(buf, "hello", 5) == 0, "queued datagram");
    pass();
    return 0;
}

static void read_all(int fd, char *buf, size_t n) {
    ssize_t r = pread(fd, buf, n - 1, 0);
    CHECK(r > 0, "pread: errno %d", errno);
    buf[r] = 0;
}

static int procfiles_case(void) {
    int go[2]; CHECK(pipe(go) == 0, "pipe");
    int res[2]; CHECK(pipe(res) == 0, "pipe");
    pid_t child = fork();
    if (child == 0) {
        close(go[1]); close(res[0]);
        char p[64]; snprintf(p, sizeof p, "/proc/%d/stat", (int)getpid());
        int status = open("/proc/self/status", O_RDONLY), stat_ = open(p, O_RDONLY);
        int fddir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(9);
        char buf[8192], msg[256] = "ok";
        read_all(status, buf, sizeof buf);
        char *pl = strstr(buf, "\nPid:");
        if (!pl || atoi(pl + 5) != getpid()) snprintf(msg, sizeof msg, "status names pid %d", pl ? atoi(pl + 5) : -1);
        read_all(stat_, buf, sizeof buf);
        if (atoi(buf) != getpid()) snprintf(msg, sizeof msg, "stat names pid %d", atoi(buf));
        if (fcntl(fddir, F_GETFD) < 0 || faccessat(fddir, "0", F_OK, AT_SYMLINK_NOFOLLOW) != 0) snprintf(msg, sizeof msg, "fd dir");
        char lp[64], t[128]; snprintf(lp, sizeof lp, "/proc/self/fd/%d", fddir);
        ssize_t n = readlink(lp, t, sizeof t - 1);
        char wantp[64]; snprintf(wantp, sizeof wantp, "/proc/%d/fd", (int)getpid());
        if (n <= 0 || (t[n] = 0, strcmp(t, wantp) != 0)) snprintf(msg, sizeof msg, "fd dir names %s", n > 0 ? t : "?");
        if (write(res[1], msg, strlen(msg)) < 0) _exit(8);
        _exit(0);
    }
    close(go[0]); close(res[1]);
    sleep_ms(100);
    ready();
    wait_go();
    CHECK(write(go[1], "g", 1) == 1, "go");
    char msg[256] = "";
    ssize_t n = read(res[0], msg, sizeof msg - 1);
    CHECK(n > 0, "child gave no answer");
    msg[n] = 0;
    CHECK(strcmp(msg, "ok") == 0, "child: %s", msg);
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    pass();
    return 0;
}

/* A /proc file of a process outside the tree (init's): refused at dump. */
static int procother_case(void) {
    int fd = open("/proc/1/stat", O_RDONLY);
    CHECK(fd >= 0, "open /proc/1/stat");
    ready();
    wait_go();
    pass();
    return 0;
}

static void wait_zombie(pid_t p) { siginfo_t si; while (waitid(P_PID, p, &si, WEXITED | WNOWAIT) != 0) sleep_ms(1); }

static int zombies_case(void) {
    int res[2]; CHECK(pipe(res) == 0, "pipe");
    /* middle: alive, with a zombie child and a living child that has a zombie of its own. */
    pid_t middle = fork();
    if (middle == 0) {
        signal(SIGTERM, SIG_DFL);
        close(res[0]);
        pid_t z1 = fork();
        if (z1 == 0) _exit(11);
        pid_t inner = fork();
        if (inner == 0) {
            pid_t z2 = fork();
            if (z2 == 0) _exit(12);
            wait_zombie(z2);
            pause();
            int st;
            _exit(waitpid(z2, &st, WNOHANG) == z2 && WEXITSTATUS(st) == 12 ? 0 : 1);
        }
        wait_zombie(z1);
        pause();
        int st, ok = waitpid(z1, &st, WNOHANG) == z1 && WEXITSTATUS(st) == 11;
        kill(inner, SIGUSR1);
        ok = ok && waitpid(inner, &st, 0) == inner && WIFEXITED(st) && WEXITSTATUS(st) == 0;
        _exit(ok ? 0 : 1);
    }
    close(res[1]);
    pid_t z0 = fork();
    if (z0 == 0) _exit(10);
    wait_zombie(z0);
    sleep_ms(300); /* the middle's tree settles */
    ready();
    wait_go();
    int st;
    CHECK(waitpid(z0, &st, WNOHANG) == z0 && WEXITSTATUS(st) == 10, "zombie z0");
    kill(middle, SIGUSR1);
    CHECK(waitpid(middle, &st, 0) == middle && WIFEXITED(st) && WEXITSTATUS(st) == 0, "middle status %#x", st);
    pass();
    return 0;
}

/* As the root a child subreaper: a zombie child that leads the process
 * group of a living process (re-parented to the root). With `session`, the
 * zombie led a session instead, which the living process stays in though
 * its parent (the root) is in another: the dump refuses that one. */
static int zombielead_case(int session) {
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
    int p[2]; CHECK(pipe(p) == 0, "pipe");
    pid_t gl = fork();
    if (gl == 0) {
        if (session) setsid(); else setpgid(0, 0);
        pid_t m = fork();
        if (m == 0) { for (;;) pause(); }
        if (write(p[1], &m, sizeof m) != sizeof m) _exit(1);
        _exit(13);
    }
    pid_t gm;
    CHECK(read(p[0], &gm, sizeof gm) == sizeof gm, "member");
    wait_zombie(gl);
    sleep_ms(100);
    ready();
    wait_go();
    CHECK(getpgid(gm) == gl, "group member's group %d, want %d", getpgid(gm), gl);
    if (session) CHECK(getsid(gm) == gl, "session member's session %d, want %d", getsid(gm), gl);
    int st;
    CHECK(waitpid(gl, &st, WNOHANG) == gl && WEXITSTATUS(st) == 13, "zombie leader");
    kill(gm, SIGKILL);
    CHECK(waitpid(gm, &st, 0) == gm, "member re-parented to us");
    pass();
    return 0;
}

/* A zombie that had joined the process group of a living sibling: refused
 * at dump. */
static int zombiegroup_case(void) {
    pid_t g = fork();
    if (g == 0) { setpgid(0, 0); for (;;) pause(); }
    while (getpgid(g) != g) sleep_ms(1);
    pid_t z = fork();
    if (z == 0) { if (setpgid(0, g) != 0) _exit(1); _exit(15); }
    wait_zombie(z);
    ready();
    wait_go();
    int st;
    CHECK(getpgid(z) == g, "the zombie is in group %d, not its sibling's %d", getpgid(z), g);
    CHECK(waitpid(z, &st, WNOHANG) == z && WEXITSTATUS(st) == 15, "zombie status %#x", st);
    kill(g, SIGKILL);
    CHECK(waitpid(g, &st, 0) == g, "group leader");
    pass();
    return 0;
}

static void on_usr1(int s) { (void)s; }

int main(int argc, char **argv) {
    setup(argc, argv);
    signal(SIGUSR1, on_usr1);
    const char *mode = argc > 2 ? argv[2] : "";
    if (!strcmp(mode, "epoll")) return epoll_case();
    if (!strcmp(mode, "fdnums")) return fdnums_case();
    if (!strcmp(mode, "opath")) return opath_case();
    if (!strcmp(mode, "fifosock")) return fifosock_case();
    if (!strcmp(mode, "dgramgone")) return dgramgone_case();
    if (!strcmp(mode, "procfiles")) return procfiles_case();
    if (!strcmp(mode, "zombies")) return zombies_case();
    if (!strcmp(mode, "procother")) return procother_case();
    if (!strcmp(mode, "zombielead")) return zombielead_case(0);
    if (!strcmp(mode, "zombiesession")) return zombielead_case(1);
    if (!strcmp(mode, "zombiegroup")) return zombiegroup_case();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
