/* A process tree: a session leader with a pipeline of two children (writer
 * and reader), a child in its own process group, an unreaped zombie, a file
 * description shared with a child (shared offset), and a dup'ed fd. After
 * restore it checks session, groups, the zombie's status, shared offsets,
 * and that it can still end and reap each child (so the parent links are
 * back), and that the pipeline carried every number in order. */
#include "harness.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

static volatile int stop;
static void on_term(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    setup(argc, argv);
    if (getsid(0) != getpid()) CHECK(setsid() == getpid(), "setsid");
    /* Shared anonymous memory inherited by the children. */
    unsigned char *shm = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    fill(shm, 4 * 4096, 31);
    int p[2]; CHECK(pipe(p) == 0, "pipe");
    pid_t writer = fork();
    if (writer == 0) {
        signal(SIGTERM, on_term);
        close(p[0]);
        for (uint32_t n = 0; !stop; n++) {
            if (write(p[1], &n, 4) != 4) _exit(3);
            sleep_ms(2);
        }
        _exit(0);
    }
    pid_t reader = fork();
    if (reader == 0) {
        close(p[1]);
        uint32_t want = 0, got;
        ssize_t r;
        while ((r = read(p[0], &got, 4)) == 4) {
            if (got != want) _exit(4);
            want++;
        }
        _exit(r == 0 && want > 10 ? 0 : 5);
    }
    close(p[0]); close(p[1]);
    pid_t grp = fork();
    if (grp == 0) { setpgid(0, 0); for (;;) pause(); }
    pid_t zombie = fork();
    if (zombie == 0) _exit(7);
    char path[4200]; snprintf(path, sizeof path, "%s/shared.txt", test_dir);
    int shared = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    pid_t sharer = fork();
    if (sharer == 0) {
        signal(SIGTERM, on_term);
        CHECK(write(shared, "child.", 6) == 6, "child write");
        while (!stop) pause();
        CHECK(write(shared, "after.", 6) == 6, "child write 2");
        memcpy(shm + 3 * 4096, "from the child", 15);
        _exit(0);
    }
    int dup = dup2(shared, 40);
    while (getpgid(grp) != grp) sleep_ms(1);
    siginfo_t si;
    while (waitid(P_PID, zombie, &si, WEXITED | WNOWAIT) != 0) sleep_ms(1);
    sleep_ms(100); /* the pipeline runs a while */
    ready();
    wait_go();
    CHECK(getsid(0) == getpid(), "session leader lost: sid %d", getsid(0));
    CHECK(getpgid(0) == getpid(), "process group %d", getpgid(0));
    CHECK(getpgid(grp) == grp, "child group %d != %d", getpgid(grp), grp);
    CHECK(getsid(grp) == getpid(), "child session %d", getsid(grp));
    CHECK(getpgid(writer) == getpid(), "writer group %d", getpgid(writer));
    int st;
    CHECK(waitpid(zombie, &st, WNOHANG) == zombie, "zombie not reapable");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7, "zombie status %#x", st);
    /* Shared description: the child's write moved our offset too. */
    CHECK(lseek(shared, 0, SEEK_CUR) == 6, "shared offset %ld", (long)lseek(shared, 0, SEEK_CUR));
    CHECK(write(dup, "dup.", 4) == 4, "write dup");
    CHECK(lseek(shared, 0, SEEK_CUR) == 10, "dup no longer shares the offset");
    kill(sharer, SIGTERM);
    CHECK(waitpid(sharer, &st, 0) == sharer && WIFEXITED(st) && WEXITSTATUS(st) == 0, "sharer status %#x", st);
    CHECK(lseek(shared, 0, SEEK_CUR) == 16, "child's write after restore did not move our offset");
    CHECK(check_fill(shm, 3 * 4096, 31) < 0, "shared memory contents lost");
    CHECK(memcmp(shm + 3 * 4096, "from the child", 15) == 0, "shared memory is no longer shared with the child");
    char buf[32] = {0};
    CHECK(pread(shared, buf, 16, 0) == 16 && memcmp(buf, "child.dup.after.", 16) == 0, "shared file holds %s", buf);
    sleep_ms(100);
    kill(writer, SIGTERM);
    CHECK(waitpid(writer, &st, 0) == writer && WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer status %#x", st);
    CHECK(waitpid(reader, &st, 0) == reader, "reader not reaped");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the pipeline lost or reordered data (reader status %#x)", st);
    kill(grp, SIGKILL);
    CHECK(waitpid(grp, &st, 0) == grp && WIFSIGNALED(st), "group child status %#x", st);
    pass();
}
