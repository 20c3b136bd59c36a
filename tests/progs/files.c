/* Files: a regular file with an offset, an O_APPEND file, a directory fd,
 * /dev/null, /dev/zero, /dev/urandom, a pipe with unread data, flags
 * (close-on-exec, O_NONBLOCK), the cwd and the umask. */
#include "harness.h"
#include <sys/stat.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    char work[4200];
    snprintf(work, sizeof work, "%s/work", test_dir);
    mkdir(work, 0755);
    CHECK(chdir(work) == 0, "chdir");
    umask(027);
    int reg = open("data.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(write(reg, "0123456789abcdef", 16) == 16, "write data");
    lseek(reg, 5, SEEK_SET);
    int app = open("log.txt", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    CHECK(write(app, "a", 1) == 1, "write log");
    int dir = open(".", O_RDONLY | O_DIRECTORY);
    int dnull = open("/dev/null", O_WRONLY), dzero = open("/dev/zero", O_RDONLY), drand = open("/dev/urandom", O_RDONLY);
    int p[2]; CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe");
    CHECK(write(p[1], "pipe-data-123", 13) == 13, "fill pipe");
    int big[2]; CHECK(pipe(big) == 0, "pipe big");
    static char chunk[60000]; fill(chunk, sizeof chunk, 21);
    CHECK(write(big[1], chunk, sizeof chunk) == sizeof chunk, "fill big pipe");
    /* A file deleted while open: its contents and offset survive. */
    int gone = open("gone.txt", O_RDWR | O_CREAT | O_TRUNC, 0640);
    CHECK(write(gone, "deleted-but-open", 16) == 16, "write gone");
    lseek(gone, 3, SEEK_SET);
    CHECK(unlink("gone.txt") == 0, "unlink");
    ready();
    wait_go();
    char buf[64] = {0};
    char g[8] = {0};
    struct stat gs;
    CHECK(read(gone, g, 4) == 4 && memcmp(g, "eted", 4) == 0, "deleted file offset/contents: %.4s", g);
    CHECK(fstat(gone, &gs) == 0 && gs.st_nlink == 0 && gs.st_size == 16, "deleted file: nlink %ld size %ld", (long)gs.st_nlink, (long)gs.st_size);
    CHECK((gs.st_mode & 0777) == 0640, "deleted file mode %o", gs.st_mode & 0777);
    CHECK(access("gone.txt", F_OK) != 0, "the deleted file came back under its name");
    CHECK(read(reg, buf, 3) == 3 && memcmp(buf, "567", 3) == 0, "regular file offset lost (read %.3s)", buf);
    CHECK(write(app, "b", 1) == 1, "append");
    FILE *f = fopen("log.txt", "r"); CHECK(f && fgets(buf, sizeof buf, f) && strcmp(buf, "ab") == 0, "append file holds %s", buf); fclose(f);
    CHECK(fcntl(app, F_GETFD) & FD_CLOEXEC, "close-on-exec lost");
    CHECK(!(fcntl(reg, F_GETFD) & FD_CLOEXEC), "close-on-exec appeared");
    struct stat a, b; fstat(dir, &a); stat(work, &b);
    CHECK(a.st_ino == b.st_ino, "directory fd points elsewhere");
    CHECK(getcwd(buf, sizeof buf) && strcmp(buf, work) == 0, "cwd is %s", buf);
    mode_t old = umask(0); CHECK(old == 027, "umask is %o", old);
    CHECK(write(dnull, "x", 1) == 1, "/dev/null");
    char z[8] = {1}; CHECK(read(dzero, z, 8) == 8 && z[0] == 0 && z[7] == 0, "/dev/zero");
    CHECK(read(drand, z, 8) == 8, "/dev/urandom");
    memset(buf, 0, sizeof buf);
    CHECK(read(p[0], buf, sizeof buf) == 13 && strcmp(buf, "pipe-data-123") == 0, "pipe data: %s", buf);
    CHECK(fcntl(p[0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
    CHECK(read(p[0], buf, 1) < 0 && errno == EAGAIN, "pipe not empty or blocking");
    static char back[60000];
    size_t got = 0; while (got < sizeof back) { ssize_t n = read(big[0], back + got, sizeof back - got); CHECK(n > 0, "big pipe short at %zu", got); got += n; }
    CHECK(check_fill(back, sizeof back, 21) < 0, "big pipe data corrupted");
    CHECK(write(p[1], "x", 1) == 1 && read(p[0], buf, 1) == 1, "pipe no longer connected");
    pass();
}
