/* File locks: POSIX record locks (a write and a read range, and a child's
 * own range on the same file), an OFD lock on a dup'ed description, an
 * exclusive flock and a shared flock whose description a child shares.
 * Optional argument "lease": also holds a read lease (which a dump must
 * refuse). After restore it checks the "lock:" lines of its fdinfo; the
 * test checks from outside that the locks are held. */
#include "harness.h"
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>

static int openf(const char *name, int flags) {
    char p[4200]; snprintf(p, sizeof p, "%s/%s", test_dir, name);
    int fd = open(p, flags | O_CREAT, 0644);
    if (fd < 0) fail("open %s: %s", name, strerror(errno));
    return fd;
}

/* fdinfo of fd has a lock line of this kind and access ending in `range`. */
static int has_lock(int fd, const char *kind, const char *access, const char *range) {
    char p[64], buf[4096]; snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    int f = open(p, O_RDONLY); if (f < 0) return 0;
    ssize_t n = read(f, buf, sizeof buf - 1); close(f); if (n <= 0) return 0; buf[n] = 0;
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
        if (strncmp(l, "lock:", 5) || !strstr(l, kind) || !strstr(l, access)) continue;
        size_t ll = strlen(l), rl = strlen(range);
        if (ll >= rl && strcmp(l + ll - rl, range) == 0) return 1;
    }
    return 0;
}

static void lock(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock l = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    if (fcntl(fd, cmd, &l)) fail("fcntl lock %d at %ld: %s", fd, (long)start, strerror(errno));
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int a = openf("a", O_RDWR), b = openf("b", O_RDWR), c = openf("c", O_RDWR), d = openf("d", O_RDONLY);
    char zeros[512] = {0};
    CHECK(write(a, zeros, sizeof zeros) == sizeof zeros, "write");
    lock(a, F_SETLK, F_WRLCK, 10, 20);
    lock(a, F_SETLK, F_RDLCK, 50, 10);
    int b2 = dup(b);
    lock(b, F_OFD_SETLK, F_RDLCK, 100, 0);
    CHECK(flock(c, LOCK_EX | LOCK_NB) == 0, "flock c");
    CHECK(flock(d, LOCK_SH | LOCK_NB) == 0, "flock d");
    if (argc > 2 && strcmp(argv[2], "lease") == 0) {
        int e = openf("e", O_RDONLY);
        CHECK(fcntl(e, F_SETLEASE, F_RDLCK) == 0, "lease: %s", strerror(errno));
    }
    pid_t child = fork();
    if (child == 0) {
        lock(a, F_SETLK, F_RDLCK, 100, 100);
        char s[32]; snprintf(s, sizeof s, "%d\n", getpid());
        put_file("child", s);
        for (;;) pause();
    }
    char p[4200]; snprintf(p, sizeof p, "%s/child", test_dir);
    while (access(p, F_OK)) sleep_ms(5);
    ready();
    wait_go();
    CHECK(has_lock(a, "POSIX", "WRITE", " 10 29"), "fd a: the POSIX write lock on 10-29 is gone");
    CHECK(has_lock(a, "POSIX", "READ", " 50 59"), "fd a: the POSIX read lock on 50-59 is gone");
    CHECK(has_lock(b, "OFDLCK", "READ", " 100 EOF") && has_lock(b2, "OFDLCK", "READ", " 100 EOF"), "fd b: the OFD lock is gone");
    CHECK(has_lock(c, "FLOCK", "WRITE", " 0 EOF"), "fd c: the exclusive flock is gone");
    CHECK(has_lock(d, "FLOCK", "READ", " 0 EOF"), "fd d: the shared flock is gone");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    pass();
}
