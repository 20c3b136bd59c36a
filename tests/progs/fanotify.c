/* fanotify groups: a notification group (FAN_CLOEXEC | FAN_NONBLOCK, event
 * files O_RDONLY | O_LARGEFILE) with an inode mark on a file
 * (FAN_MODIFY | FAN_CLOSE_WRITE), one on a directory (FAN_OPEN for its
 * children) and an ignore-only mark (FAN_OPEN, surviving modification) on a
 * file in it; a FAN_CLASS_CONTENT group with FAN_UNLIMITED_QUEUE holding a
 * mount mark and a filesystem mark (ignore masks only, surviving
 * modification: no events from the rest of the machine) and an inode mark added with FAN_MARK_IGNORE. After
 * the restore the fanotify lines of each fdinfo read the same and the
 * marks report (and ignore) events as before.
 * With "perm": a FAN_CLASS_CONTENT group (fd 3) asking for FAN_OPEN_PERM on
 * a file; with "queued": a group (fd 3) holding an event not yet read.
 * Both are refused at dump time; the program then checks it runs on. */
#include "harness.h"
#include <sys/fanotify.h>

#ifndef FAN_MARK_IGNORE
#define FAN_MARK_IGNORE 0x00000400
#endif

static void sub(char *out, const char *name) { snprintf(out, 4200, "%s/%s", test_dir, name); }

/* The "fanotify" lines of /proc/self/fdinfo/FD. */
static void marks_of(int fd, char *out, size_t len) {
    char p[64], buf[8192];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(p, "r");
    CHECK(f != NULL, "open %s", p);
    out[0] = 0;
    while (fgets(buf, sizeof buf, f))
        if (strncmp(buf, "fanotify ", 9) == 0) strncat(out, buf, len - strlen(out) - 1);
    fclose(f);
}

static int fdflags(int fd) { return fcntl(fd, F_GETFL); }

/* The next event of group g within 2 s (a non-blocking group: polled). */
static struct fanotify_event_metadata next_event(int g) {
    struct fanotify_event_metadata m;
    for (int i = 0; i < 200; i++) {
        ssize_t n = read(g, &m, sizeof m);
        if (n == (ssize_t)sizeof m) return m;
        CHECK(n < 0 && errno == EAGAIN, "fanotify read returned %zd (errno %d)", n, errno);
        sleep_ms(10);
    }
    fail("no fanotify event within 2 s");
    return m;
}

static void expect(int g, unsigned long long mask, const char *path) {
    struct fanotify_event_metadata m = next_event(g);
    CHECK(m.mask & mask, "event mask %llx, wanted %llx", (unsigned long long)m.mask, mask);
    CHECK(m.pid == getpid(), "event from pid %d", m.pid);
    char link[64], got[4200];
    snprintf(link, sizeof link, "/proc/self/fd/%d", m.fd);
    ssize_t n = readlink(link, got, sizeof got - 1);
    CHECK(n > 0, "readlink of event fd");
    got[n] = 0;
    CHECK(strcmp(got, path) == 0, "event on %s, wanted %s", got, path);
    close(m.fd);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    char dir[4200], file[4200], quiet[4200], other[4200], third[4200];
    sub(dir, "watched"); sub(file, "file"); sub(quiet, "watched/quiet"); sub(other, "watched/other"); sub(third, "third");
    CHECK(mkdir(dir, 0755) == 0, "mkdir");
    int fd;
    const char *paths[] = { file, quiet, other, third };
    for (int i = 0; i < 4; i++) {
        CHECK((fd = open(paths[i], O_CREAT | O_WRONLY, 0644)) >= 0, "create %s", paths[i]);
        close(fd);
    }

    if (argc > 2) {
        int q = strcmp(argv[2], "queued") == 0;
        int h = fanotify_init(q ? FAN_CLASS_NOTIF : FAN_CLASS_CONTENT, O_RDONLY);
        CHECK(h == 3, "fanotify_init: %d (fd %d)", errno, h);
        CHECK(fanotify_mark(h, FAN_MARK_ADD, q ? FAN_CLOSE_WRITE : FAN_OPEN_PERM, AT_FDCWD, file) == 0, "mark: %d", errno);
        if (q) {
            CHECK((fd = open(file, O_WRONLY)) >= 0, "open");
            close(fd);
        }
        char before[8192], now[8192];
        marks_of(h, before, sizeof before);
        ready();
        wait_go();
        marks_of(h, now, sizeof now);
        CHECK(strcmp(before, now) == 0, "marks changed");
        if (q) expect(h, FAN_CLOSE_WRITE, file);
        pass();
    }

    int g = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE);
    CHECK(g >= 0, "fanotify_init: %d", errno);
    CHECK(fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, file) == 0, "mark file: %d", errno);
    CHECK(fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_ONLYDIR, FAN_OPEN | FAN_EVENT_ON_CHILD, AT_FDCWD, dir) == 0, "mark dir: %d", errno);
    CHECK(fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, quiet) == 0, "ignore quiet: %d", errno);

    int c = fanotify_init(FAN_CLASS_CONTENT | FAN_UNLIMITED_QUEUE, O_RDWR);
    CHECK(c >= 0, "fanotify_init content: %d", errno);
    CHECK(fanotify_mark(c, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_MODIFY, AT_FDCWD, test_dir) == 0, "mount mark: %d", errno);
    CHECK(fanotify_mark(c, FAN_MARK_ADD | FAN_MARK_FILESYSTEM | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_ACCESS | FAN_CLOSE_NOWRITE, AT_FDCWD, test_dir) == 0, "filesystem mark: %d", errno);
    CHECK(fanotify_mark(c, FAN_MARK_ADD, FAN_CLOSE_WRITE, AT_FDCWD, third) == 0, "mark third: %d", errno);
    CHECK(fanotify_mark(c, FAN_MARK_ADD | FAN_MARK_IGNORE | FAN_MARK_IGNORED_SURV_MODIFY, FAN_ACCESS, AT_FDCWD, third) == 0, "FAN_MARK_IGNORE: %d", errno);

    /* Before the dump: the marks work (and their events are read). */
    CHECK((fd = open(file, O_WRONLY)) >= 0 && write(fd, "x", 1) == 1, "write file");
    expect(g, FAN_MODIFY, file);
    close(fd);
    expect(g, FAN_CLOSE_WRITE, file);

    static char before_g[8192], before_c[8192], after[8192];
    marks_of(g, before_g, sizeof before_g);
    marks_of(c, before_c, sizeof before_c);
    int gfl = fdflags(g), cfl = fdflags(c), gfd = fcntl(g, F_GETFD), cfd = fcntl(c, F_GETFD);

    ready();
    wait_go();

    marks_of(g, after, sizeof after);
    CHECK(strcmp(before_g, after) == 0, "notification group marks were\n%s now\n%s", before_g, after);
    marks_of(c, after, sizeof after);
    CHECK(strcmp(before_c, after) == 0, "content group marks were\n%s now\n%s", before_c, after);
    CHECK(fdflags(g) == gfl && fdflags(c) == cfl, "status flags %o/%o, were %o/%o", fdflags(g), fdflags(c), gfl, cfl);
    CHECK(fcntl(g, F_GETFD) == gfd && fcntl(c, F_GETFD) == cfd, "close-on-exec changed");

    /* The ignored file makes no event; the other child of the dir does. */
    CHECK((fd = open(quiet, O_RDONLY)) >= 0, "open quiet");
    close(fd);
    CHECK((fd = open(other, O_RDONLY)) >= 0, "open other");
    close(fd);
    expect(g, FAN_OPEN, other);
    CHECK((fd = open(file, O_WRONLY | O_APPEND)) >= 0 && write(fd, "y", 1) == 1, "write file after restore");
    expect(g, FAN_MODIFY, file);
    close(fd);
    expect(g, FAN_CLOSE_WRITE, file);
    /* Event files carry the saved flags. */
    CHECK((fd = open(third, O_WRONLY)) >= 0, "open third");
    close(fd);
    struct fanotify_event_metadata m;
    CHECK(read(c, &m, sizeof m) == sizeof m, "content group read");
    CHECK(m.mask & FAN_CLOSE_WRITE, "content group mask %llx", (unsigned long long)m.mask);
    CHECK((fcntl(m.fd, F_GETFL) & O_ACCMODE) == O_RDWR, "event file flags %o", fcntl(m.fd, F_GETFL));
    close(m.fd);
    struct fanotify_event_metadata more;
    CHECK(read(g, &more, sizeof more) < 0 && errno == EAGAIN, "unexpected event %llx", (unsigned long long)more.mask);
    pass();
}
