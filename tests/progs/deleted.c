/* Deleted things still open, and private mappings of deleted files and
 * memfds; one case per mode (the argument after DIR):
 *   nodes - a FIFO (with unread data; a read end and a write end opened
 *           apart), a directory (mode 0751), a symlink opened with
 *           O_PATH|O_NOFOLLOW and a character device node (a copy of
 *           /dev/null made with mknod), each removed while open;
 *   cwd   - the working directory removed;
 *   maps  - MAP_PRIVATE mappings of a deleted file (its fd kept) and of a
 *           memfd, each with a page the process wrote (copied on write),
 *           pages it only read and pages it never touched; MAP_SHARED
 *           /dev/zero shared with a child after fork, MAP_PRIVATE
 *           /dev/zero with a page written; the deleted file is open
 *           twice (two descriptions of one file) and mapped shared too;
 *   root  - chroot'ed into a directory (mode 0710), which is its cwd too,
 *           then that directory removed; the harness files are reached
 *           through a descriptor of DIR kept from before;
 *   big   - deleted sparse files: 2 MiB of data in 8 MiB (kept in the page
 *           file) and 66 MiB of data in 200 MiB (above the default limit:
 *           dumped with --max-deleted-file-size);
 * Refused at dump (the process runs on and checks itself afterwards):
 *   mapnofd - a private mapping of a deleted file no fd holds any more;
 *   dirgone - a deleted file whose directory was removed too;
 *   kmsg    - a removed copy of /dev/kmsg (a device with state).
 * After restore each checks its own state. */
#include "harness.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#define PG 4096

static char path_buf[4200];
static char path_buf2[4200];
static const char *at_path_tmp(const char *name) {
    snprintf(path_buf2, sizeof path_buf2, "%s/%s", test_dir, name);
    return path_buf2;
}
static const char *at(const char *name) {
    snprintf(path_buf, sizeof path_buf, "%s/%s", test_dir, name);
    return path_buf;
}

/* Whether /proc/self/fd/FD (or another /proc/self link) ends with " (deleted)". */
static int link_deleted(const char *link) {
    char buf[4200];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    if (n < 0) return 0;
    buf[n] = 0;
    return n > 10 && !strcmp(buf + n - 10, " (deleted)");
}

static int fd_deleted(int fd) {
    char l[64];
    snprintf(l, sizeof l, "/proc/self/fd/%d", fd);
    return link_deleted(l);
}

static int nodes_case(void) {
    /* FIFO: two descriptions (read+write, write-only), unread data. */
    CHECK(mkfifo(at("fifo"), 0640) == 0, "mkfifo: %s", strerror(errno));
    int fr = open(at("fifo"), O_RDWR | O_NONBLOCK);
    int fw = open(at("fifo"), O_WRONLY | O_NONBLOCK);
    CHECK(fr >= 0 && fw >= 0, "open fifo: %s", strerror(errno));
    CHECK(write(fw, "hello fifo", 10) == 10, "write fifo");
    CHECK(unlink(at("fifo")) == 0, "unlink fifo");
    /* A FIFO only written to (its reader gone), data unread, removed. */
    CHECK(mkfifo(at("fifo2"), 0600) == 0, "mkfifo 2");
    int tr = open(at("fifo2"), O_RDONLY | O_NONBLOCK);
    int fw2 = open(at("fifo2"), O_WRONLY | O_NONBLOCK);
    CHECK(tr >= 0 && fw2 >= 0, "open fifo 2");
    CHECK(write(fw2, "only written", 12) == 12, "write fifo 2");
    close(tr);
    CHECK(unlink(at("fifo2")) == 0, "unlink fifo 2");
    /* Directory, removed. */
    CHECK(mkdir(at("dir"), 0751) == 0, "mkdir");
    chmod(at("dir"), 0751);
    int dfd = open(at("dir"), O_RDONLY | O_DIRECTORY);
    CHECK(dfd >= 0, "open dir: %s", strerror(errno));
    CHECK(rmdir(at("dir")) == 0, "rmdir");
    /* Symlink opened with O_PATH|O_NOFOLLOW, removed. */
    CHECK(symlink("some/target-of-the-link", at("link")) == 0, "symlink");
    int lfd = open(at("link"), O_PATH | O_NOFOLLOW);
    CHECK(lfd >= 0, "open symlink: %s", strerror(errno));
    CHECK(unlink(at("link")) == 0, "unlink link");
    /* A copy of /dev/null, removed. */
    CHECK(mknod(at("null"), S_IFCHR | 0620, makedev(1, 3)) == 0, "mknod: %s", strerror(errno));
    chmod(at("null"), 0620);
    int nfd = open(at("null"), O_RDWR);
    CHECK(nfd >= 0, "open null copy: %s", strerror(errno));
    CHECK(unlink(at("null")) == 0, "unlink null");

    ready();
    wait_go();

    struct stat st;
    /* FIFO: same data, still deleted, one FIFO for both ends. */
    CHECK(fstat(fr, &st) == 0 && S_ISFIFO(st.st_mode), "fifo fd is not a FIFO");
    CHECK((st.st_mode & 07777) == 0640, "fifo mode %o", st.st_mode & 07777);
    CHECK(st.st_nlink == 0, "fifo has %ld links", (long)st.st_nlink);
    CHECK(fd_deleted(fr) && fd_deleted(fw), "fifo fds are not deleted");
    char buf[64] = {0};
    ssize_t n = read(fr, buf, sizeof buf);
    CHECK(n == 10 && !memcmp(buf, "hello fifo", 10), "fifo data: %zd '%.*s'", n, (int)(n > 0 ? n : 0), buf);
    CHECK(write(fw, "again", 5) == 5, "write fifo after");
    n = read(fr, buf, sizeof buf);
    CHECK(n == 5 && !memcmp(buf, "again", 5), "fifo ends are not one FIFO: %zd", n);
    struct stat st2;
    CHECK(fstat(fw, &st2) == 0 && st2.st_ino == st.st_ino, "fifo ends differ");
    /* The FIFO only written to: its data is there for a new reader. */
    char l2[64];
    snprintf(l2, sizeof l2, "/proc/self/fd/%d", fw2);
    int r2 = open(l2, O_RDONLY | O_NONBLOCK);
    CHECK(r2 >= 0, "open a reader of fifo 2: %s", strerror(errno));
    n = read(r2, buf, sizeof buf);
    CHECK(n == 12 && !memcmp(buf, "only written", 12), "fifo 2 data: %zd", n);
    CHECK(fd_deleted(fw2), "fifo 2 is not deleted");
    /* Directory. */
    CHECK(fstat(dfd, &st) == 0 && S_ISDIR(st.st_mode), "dir fd is not a directory");
    CHECK((st.st_mode & 07777) == 0751, "dir mode %o", st.st_mode & 07777);
    CHECK(st.st_uid == getuid() && st.st_gid == getgid(), "dir owner");
    CHECK(st.st_nlink == 0, "dir has %ld links", (long)st.st_nlink);
    CHECK(fd_deleted(dfd), "dir fd is not deleted");
    int dot = openat(dfd, ".", O_RDONLY | O_DIRECTORY);
    CHECK(dot >= 0, "openat(dir, \".\"): %s", strerror(errno));
    close(dot);
    CHECK(openat(dfd, "new", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT,
          "a file could be made in the deleted directory");
    char cwd[4200];
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
    CHECK(fchdir(dfd) == 0, "fchdir: %s", strerror(errno));
    CHECK(link_deleted("/proc/self/cwd"), "fchdir went elsewhere");
    CHECK(chdir(cwd) == 0, "chdir back");
    /* Symlink. */
    CHECK(fstatat(lfd, "", &st, AT_EMPTY_PATH) == 0 && S_ISLNK(st.st_mode), "link fd is not a symlink");
    CHECK(st.st_nlink == 0, "link has %ld links", (long)st.st_nlink);
    CHECK(fd_deleted(lfd), "link fd is not deleted");
    n = readlinkat(lfd, "", buf, sizeof buf - 1);
    CHECK(n == 23 && !memcmp(buf, "some/target-of-the-link", 23), "readlinkat: %zd", n);
    int fl = fcntl(lfd, F_GETFL);
    CHECK(fl >= 0 && (fl & O_PATH), "link fd lost O_PATH");
    /* Device node. */
    CHECK(fstat(nfd, &st) == 0 && S_ISCHR(st.st_mode), "null copy is not a char device");
    CHECK(st.st_rdev == makedev(1, 3), "null copy rdev %u:%u", major(st.st_rdev), minor(st.st_rdev));
    CHECK((st.st_mode & 07777) == 0620, "null copy mode %o", st.st_mode & 07777);
    CHECK(st.st_nlink == 0, "null copy has %ld links", (long)st.st_nlink);
    CHECK(fd_deleted(nfd), "null copy is not deleted");
    CHECK(write(nfd, "x", 1) == 1, "write to the null copy");
    CHECK(read(nfd, buf, 1) == 0, "read from the null copy");
    CHECK((fcntl(nfd, F_GETFL) & O_ACCMODE) == O_RDWR, "null copy flags");
    pass();
    return 0;
}

static int cwd_case(void) {
    CHECK(mkdir(at("wd"), 0705) == 0, "mkdir");
    chmod(at("wd"), 0705);
    CHECK(chdir(at("wd")) == 0, "chdir");
    CHECK(rmdir(at("wd")) == 0, "rmdir");
    ready();
    wait_go();
    struct stat st;
    CHECK(link_deleted("/proc/self/cwd"), "the cwd is not deleted");
    CHECK(stat(".", &st) == 0 && S_ISDIR(st.st_mode), "stat .");
    CHECK((st.st_mode & 07777) == 0705, "cwd mode %o", st.st_mode & 07777);
    CHECK(st.st_nlink == 0, "cwd has %ld links", (long)st.st_nlink);
    CHECK(open("new", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT,
          "a file could be made in the deleted cwd");
    pass();
    return 0;
}

/* The inode /proc/self/maps gives for the mapping at `addr`. */
static unsigned long maps_inode(void *addr) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4400];
    unsigned long ino = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long s, e, off, i;
        unsigned maj, min;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &s, &e, perms, &off, &maj, &min, &i) == 7 &&
            (unsigned long)addr >= s && (unsigned long)addr < e)
            ino = i;
    }
    if (f) fclose(f);
    return ino;
}

/* Four pages of `fd` (filled with seed) mapped private: page 1 written,
 * page 0 read, pages 2 and 3 untouched. */
static char *private_map(int fd, uint64_t seed) {
    char *p = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) fail("mmap private: %s", strerror(errno));
    volatile char c = p[0];
    (void)c;
    fill(p + PG, PG, seed + 100);
    return p;
}

static void check_private(const char *what, int fd, char *p, uint64_t seed) {
    char page[PG];
    CHECK(check_fill(p + PG, PG, seed + 100) < 0, "%s: the written page changed", what);
    for (int i = 0; i < 4; i++) {
        if (i == 1) continue;
        CHECK(pread(fd, page, PG, (off_t)i * PG) == PG, "%s: pread", what);
        CHECK(!memcmp(page, p + (size_t)i * PG, PG), "%s: page %d differs from the file", what, i);
    }
    /* Same file: a write through the fd shows in an untouched page, not in the copied one. */
    memset(page, 0x5a, PG);
    CHECK(pwrite(fd, page, PG, 3 * PG) == PG, "%s: pwrite", what);
    CHECK(pwrite(fd, page, PG, 1 * PG) == PG, "%s: pwrite", what);
    CHECK(!memcmp(page, p + 3 * PG, PG), "%s: the mapping no longer maps the file", what);
    CHECK(check_fill(p + PG, PG, seed + 100) < 0, "%s: the copied page follows the file", what);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_ino == maps_inode(p), "%s: the mapping maps another file", what);
}

static int maps_case(void) {
    /* A deleted file mapped private, its fd kept. */
    int ffd = open(at("mapped"), O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(ffd >= 0, "create: %s", strerror(errno));
    char *buf = malloc(4 * PG);
    fill(buf, 4 * PG, 7);
    CHECK(write(ffd, buf, 4 * PG) == 4 * PG, "write file");
    char *fp = private_map(ffd, 7);
    char *fs = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
    CHECK(fs != MAP_FAILED, "mmap shared: %s", strerror(errno));
    fs[2 * PG] = 0x33;
    int ffd2 = open(at("mapped"), O_RDONLY);
    CHECK(ffd2 >= 0, "open again: %s", strerror(errno));
    CHECK(unlink(at("mapped")) == 0, "unlink");
    /* A memfd mapped private. */
    int mfd = memfd_create("privmap", MFD_CLOEXEC);
    CHECK(mfd >= 0, "memfd_create");
    fill(buf, 4 * PG, 9);
    CHECK(write(mfd, buf, 4 * PG) == 4 * PG, "write memfd");
    char *mp = private_map(mfd, 9);
    /* /dev/zero: shared with a child, and private. */
    int z = open("/dev/zero", O_RDWR);
    CHECK(z >= 0, "open /dev/zero");
    char *zs = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, z, 0);
    char *zp = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, z, 0);
    CHECK(zs != MAP_FAILED && zp != MAP_FAILED, "mmap /dev/zero");
    close(z);
    fill(zs, PG, 11);
    fill(zp, PG, 12);
    pid_t child = fork();
    if (child == 0) {
        /* The child writes the second shared page after the restore, when told. */
        char p[4200];
        snprintf(p, sizeof p, "%s/go", test_dir);
        while (access(p, F_OK) != 0) sleep_ms(10);
        fill(zs + PG, PG, 13);
        _exit(check_fill(zs, PG, 11) < 0 && check_fill(zp, PG, 12) < 0 ? 0 : 1);
    }
    ready();
    wait_go();
    check_private("deleted file", ffd, fp, 7);
    CHECK(fd_deleted(ffd) && fd_deleted(ffd2), "the mapped file is not deleted");
    struct stat s1, s2;
    CHECK(fstat(ffd, &s1) == 0 && fstat(ffd2, &s2) == 0, "fstat");
    CHECK(s1.st_ino == s2.st_ino && s1.st_dev == s2.st_dev && s1.st_nlink == 0,
          "the two descriptions of the deleted file are not one file");
    CHECK((fcntl(ffd2, F_GETFL) & O_ACCMODE) == O_RDONLY, "second description's flags");
    CHECK(fs[3 * PG] == 0x5a && fs[2 * PG] == 0x33, "the shared mapping is not of the deleted file");
    CHECK(maps_inode(fs) == s1.st_ino, "the shared mapping maps another file");
    fs[0] = 0x77;
    char pg[PG];
    CHECK(pread(ffd, pg, 1, 0) == 1 && pg[0] == 0x77, "a write to the shared mapping is not in the file");
    CHECK(pread(ffd2, pg, PG, 3 * PG) == PG && pg[0] == 0x5a, "a write through one description is not seen through the other");
    check_private("memfd", mfd, mp, 9);
    int status;
    CHECK(waitpid(child, &status, 0) == child, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child saw other /dev/zero contents");
    CHECK(check_fill(zs, PG, 11) < 0, "shared /dev/zero page 0");
    CHECK(check_fill(zs + PG, PG, 13) < 0, "shared /dev/zero: the child's write is not seen");
    CHECK(check_fill(zp, PG, 12) < 0, "private /dev/zero page 0");
    for (int i = 0; i < PG; i++) CHECK(zp[PG + i] == 0, "private /dev/zero page 1 not zero");
    pass();
    return 0;
}

/* A deleted file of `size` bytes holding data (pattern `seed`) in
 * [at, at + len) and [size - PG, size), the rest holes. */
static int big_file(const char *name, off_t size, off_t at, size_t len, uint64_t seed) {
    int fd = open(at_path_tmp(name), O_RDWR | O_CREAT | O_EXCL, 0640);
    CHECK(fd >= 0, "create %s", name);
    char *buf = malloc(len);
    fill(buf, len, seed);
    CHECK(pwrite(fd, buf, len, at) == (ssize_t)len, "write %s", name);
    fill(buf, PG, seed + 1);
    CHECK(pwrite(fd, buf, PG, size - PG) == PG, "write %s tail", name);
    free(buf);
    CHECK(unlink(at_path_tmp(name)) == 0, "unlink %s", name);
    return fd;
}

static void check_big(int fd, const char *name, off_t size, off_t at, size_t len, uint64_t seed) {
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == size && st.st_nlink == 0 && (st.st_mode & 07777) == 0640,
          "%s: size %ld links %ld mode %o", name, (long)st.st_size, (long)st.st_nlink, st.st_mode & 07777);
    CHECK(fd_deleted(fd), "%s is not deleted", name);
    char *buf = malloc(len);
    CHECK(pread(fd, buf, len, at) == (ssize_t)len && check_fill(buf, len, seed) < 0, "%s: data", name);
    CHECK(pread(fd, buf, PG, size - PG) == PG && check_fill(buf, PG, seed + 1) < 0, "%s: tail", name);
    free(buf);
    CHECK(lseek(fd, 0, SEEK_DATA) == at, "%s: first data at %ld", name, (long)lseek(fd, 0, SEEK_DATA));
    CHECK(lseek(fd, at, SEEK_HOLE) == at + (off_t)len, "%s: hole after the data", name);
    CHECK(lseek(fd, 0, SEEK_HOLE) == 0, "%s: no hole at 0", name);
}

static int big_case(void) {
    int a = big_file("small", 8 << 20, 1 << 20, 2 << 20, 21);
    int b = big_file("large", 200 << 20, 16 << 20, 66 << 20, 22);
    ready();
    wait_go();
    check_big(a, "small", 8 << 20, 1 << 20, 2 << 20, 21);
    check_big(b, "large", 200 << 20, 16 << 20, 66 << 20, 22);
    pass();
    return 0;
}

/* The harness files, through a descriptor of DIR (the process is
 * chroot'ed where DIR's path does not exist). */
static int dirfd_out = -1;
static void put_at(const char *name, const char *text) {
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    int fd = openat(dirfd_out, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) _exit(90);
    if (write(fd, text, strlen(text)) < 0) _exit(91);
    close(fd);
    renameat(dirfd_out, tmp, dirfd_out, name);
}
#define CHECK_AT(cond, ...) do { if (!(cond)) { char m[512] = "FAIL: "; \
    snprintf(m + 6, sizeof m - 8, __VA_ARGS__); strcat(m, "\n"); put_at("result", m); exit(1); } } while (0)

static int root_case(void) {
    dirfd_out = open(test_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(dirfd_out >= 0, "open DIR");
    CHECK(mkdir(at("jail"), 0710) == 0, "mkdir");
    chmod(at("jail"), 0710);
    CHECK(chroot(at("jail")) == 0, "chroot: %s", strerror(errno));
    CHECK_AT(chdir("/") == 0, "chdir /");
    CHECK_AT(unlinkat(dirfd_out, "jail", AT_REMOVEDIR) == 0, "rmdir jail: %s", strerror(errno));
    put_at("ready", "ready\n");
    while (faccessat(dirfd_out, "go", F_OK, 0) != 0) sleep_ms(10);
    struct stat r, c;
    CHECK_AT(stat("/", &r) == 0 && S_ISDIR(r.st_mode), "stat /");
    CHECK_AT((r.st_mode & 07777) == 0710, "root mode %o", r.st_mode & 07777);
    CHECK_AT(r.st_nlink == 0, "the root has %ld links", (long)r.st_nlink);
    CHECK_AT(stat(".", &c) == 0 && c.st_ino == r.st_ino && c.st_dev == r.st_dev, "the cwd is not the root");
    CHECK_AT(open("/x", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT, "a file could be made in the deleted root");
    CHECK_AT(access("/tmp", F_OK) != 0 && access("/etc", F_OK) != 0, "not confined any more");
    put_at("result", "PASS\n");
    return 0;
}

/* Dumps of these are refused: the state stays as it was. */
static int mapnofd_case(void) {
    int fd = open(at("gone"), O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0, "create");
    char *buf = malloc(2 * PG);
    fill(buf, 2 * PG, 3);
    CHECK(write(fd, buf, 2 * PG) == 2 * PG, "write");
    char *p = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(p != MAP_FAILED, "mmap");
    close(fd);
    CHECK(unlink(at("gone")) == 0, "unlink");
    p[0] = 1;
    ready();
    wait_go();
    CHECK(p[0] == 1, "the written page changed");
    CHECK(!memcmp(p + PG, buf + PG, PG), "the mapping changed");
    pass();
    return 0;
}

static int dirgone_case(void) {
    CHECK(mkdir(at("sub"), 0755) == 0, "mkdir");
    int fd = open(at("sub/f"), O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0, "create");
    CHECK(write(fd, "data", 4) == 4, "write");
    CHECK(unlink(at("sub/f")) == 0 && rmdir(at("sub")) == 0, "remove");
    ready();
    wait_go();
    char b[4];
    CHECK(pread(fd, b, 4, 0) == 4 && !memcmp(b, "data", 4), "the file changed");
    pass();
    return 0;
}

static int kmsg_case(void) {
    CHECK(mknod(at("kmsg"), S_IFCHR | 0600, makedev(1, 11)) == 0, "mknod: %s", strerror(errno));
    int fd = open(at("kmsg"), O_WRONLY);
    CHECK(fd >= 0, "open: %s", strerror(errno));
    CHECK(unlink(at("kmsg")) == 0, "unlink");
    ready();
    wait_go();
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_rdev == makedev(1, 11), "the device changed");
    pass();
    return 0;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    const char *mode = argc > 2 ? argv[2] : "";
    if (!strcmp(mode, "nodes")) return nodes_case();
    if (!strcmp(mode, "cwd")) return cwd_case();
    if (!strcmp(mode, "maps")) return maps_case();
    if (!strcmp(mode, "big")) return big_case();
    if (!strcmp(mode, "root")) return root_case();
    if (!strcmp(mode, "mapnofd")) return mapnofd_case();
    if (!strcmp(mode, "dirgone")) return dirgone_case();
    if (!strcmp(mode, "kmsg")) return kmsg_case();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
