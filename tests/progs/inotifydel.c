/* inotify watches on deleted files: a file is watched (wd 1,
 * IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF), then deleted
 * while the process holds it open for writing (IN_ATTRIB read); a second
 * watch (wd 2) on a directory that stays. After the restore the watch
 * numbers are the same, no event is waiting, a write through the held
 * descriptor gives IN_MODIFY on wd 1, and closing it IN_CLOSE_WRITE, then
 * IN_DELETE_SELF and IN_IGNORED (the file is gone for good).
 * With "mapped": the watched file (fd 4 watches it) is deleted while only a
 * shared mapping holds it (its descriptor closed): refused at dump time;
 * the program then checks its watch is still there. */
#include "harness.h"
#include <poll.h>
#include <sys/inotify.h>
#include <sys/mman.h>

static void sub(char *out, const char *name) { snprintf(out, 4200, "%s/%s", test_dir, name); }

static struct inotify_event *next_event(int in, char *buf, size_t len) {
    struct pollfd p = { in, POLLIN, 0 };
    CHECK(poll(&p, 1, 2000) == 1, "no inotify event within 2 s");
    ssize_t n = read(in, buf, len);
    CHECK(n >= (ssize_t)sizeof(struct inotify_event), "inotify read returned %zd (errno %d)", n, errno);
    return (struct inotify_event *)buf;
}

/* One event of fd `in`: wd and mask. */
static void expect(int in, int wd, uint32_t mask) {
    static char buf[4096] __attribute__((aligned(8)));
    struct pollfd p = { in, POLLIN, 0 };
    CHECK(poll(&p, 1, 2000) == 1, "no inotify event within 2 s (wanted %x on %d)", mask, wd);
    /* One event per read: the buffer holds exactly one header. */
    ssize_t n = read(in, buf, sizeof(struct inotify_event));
    CHECK(n == (ssize_t)sizeof(struct inotify_event), "inotify read returned %zd (errno %d)", n, errno);
    struct inotify_event *e = (struct inotify_event *)buf;
    CHECK(e->wd == wd && e->mask == mask, "event wd %d mask %x, wanted wd %d mask %x", e->wd, e->mask, wd, mask);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    (void)next_event;
    char file[4200], dir[4200];
    sub(file, "watched"); sub(dir, "dir");
    CHECK(mkdir(dir, 0755) == 0, "mkdir");
    if (argc > 2) {
        int m = open(file, O_CREAT | O_RDWR, 0640);
        CHECK(m == 3 && ftruncate(m, 4096) == 0, "create mapped");
        char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
        CHECK(map != MAP_FAILED, "mmap");
        close(m);
        int w = inotify_init1(IN_NONBLOCK);
        CHECK(w == 3, "inotify_init1 gave %d", w);
        CHECK(dup2(w, 4) == 4 && close(w) == 0, "dup2");
        CHECK(inotify_add_watch(4, file, IN_ATTRIB | IN_DELETE_SELF) == 1, "watch mapped");
        CHECK(unlink(file) == 0, "unlink mapped");
        expect(4, 1, IN_ATTRIB);
        ready();
        wait_go();
        CHECK(inotify_add_watch(4, dir, IN_CREATE) == 2, "the watch on the mapped file is gone");
        CHECK(munmap(map, 4096) == 0, "munmap");
        expect(4, 1, IN_DELETE_SELF);
        pass();
    }
    int fd = open(file, O_CREAT | O_RDWR, 0640);
    CHECK(fd >= 0 && write(fd, "hello", 5) == 5, "create");
    int in = inotify_init1(IN_NONBLOCK);
    CHECK(in >= 0, "inotify_init1");
    uint32_t mask = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF;
    CHECK(inotify_add_watch(in, file, mask) == 1, "watch file");
    CHECK(inotify_add_watch(in, dir, IN_CREATE) == 2, "watch dir");
    CHECK(unlink(file) == 0, "unlink");
    expect(in, 1, IN_ATTRIB);

    ready();
    wait_go();

    char buf[256];
    struct pollfd p = { in, POLLIN, 0 };
    int n = poll(&p, 1, 200);
    if (n == 1) {
        ssize_t got = read(in, buf, sizeof buf);
        struct inotify_event *e = (struct inotify_event *)buf;
        fail("an event is waiting after the restore (%zd bytes; wd %d mask %x)", got, e->wd, e->mask);
    }
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_nlink == 0, "the held file is not deleted");
    CHECK(pwrite(fd, "!", 1, 5) == 1, "write");
    expect(in, 1, IN_MODIFY);
    char dfile[4300];
    snprintf(dfile, sizeof dfile, "%s/new", dir);
    int t = open(dfile, O_CREAT | O_WRONLY, 0600);
    CHECK(t >= 0, "create in dir");
    close(t);
    struct inotify_event *e = next_event(in, buf, sizeof buf);
    CHECK(e->wd == 2 && e->mask == IN_CREATE && strcmp(e->name, "new") == 0, "dir event wd %d mask %x", e->wd, e->mask);
    close(fd);
    expect(in, 1, IN_CLOSE_WRITE);
    expect(in, 1, IN_DELETE_SELF);
    expect(in, 1, IN_IGNORED);
    CHECK(inotify_add_watch(in, dir, IN_DELETE) == 2, "the directory's watch moved");
    pass();
}
