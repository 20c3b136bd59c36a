/* A forking server's memory: the parent writes 256 MiB, forks 4 children,
 * and each child rewrites its own 1 MiB of it and drops the next 1 MiB
 * (MADV_DONTNEED: zeros); the rest stays shared copy-on-write between all
 * of them. Child 0 then forks a grandchild, which shares child 0's view.
 * After restore every process checks its memory (a child: its own 1 MiB,
 * zeros in the dropped one, the parent's pattern everywhere else; the
 * parent: its pattern everywhere) and the parent passes only if all
 * children and the grandchild did.
 * `cowshare DIR MIB lock` mlocks the area in the parent before the forks
 * (the children share its locked pages; their copies are not locked).
 * Whether the pages are shared again is measured from outside (the sum of
 * the tree's Pss, crates/godwit-cli/tests/programs.rs). `cowshare DIR MIB`
 * writes MIB MiB instead. */
#include "harness.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096
#define CHILDREN 4
#define OWN (1 << 20)

static size_t size = 256UL << 20;
static char *mem;

static int own_at(int k) { return (int)((size / CHILDREN) * (size_t)k / OWN); }

/* Memory as child k (or the parent, k < 0) must see it; returns the first
 * bad word or -1. */
static long check(int k) {
    long bad;
    if (k < 0) return check_fill(mem, size, 7);
    size_t at = (size_t)own_at(k) * OWN;
    if ((bad = check_fill(mem, at, 7)) >= 0) return bad;
    if ((bad = check_fill(mem + at, OWN, 100 + k)) >= 0) return (long)(at / 8) + bad;
    const uint64_t *w = (const uint64_t *)mem;
    for (size_t i = (at + OWN) / 8; i < (at + 2 * OWN) / 8; i++) if (w[i] != 0) return (long)i;
    /* The parent's pattern beyond: word i of the whole area. */
    for (size_t i = (at + 2 * OWN) / 8; i < size / 8; i++) if (w[i] != pat(7, i)) return (long)i;
    return -1;
}

/* Waits for DIR/name to appear; 1 if it did. */
static int wait_file(const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", test_dir, name);
    for (int i = 0; i < 3000 && access(p, F_OK) != 0; i++) sleep_ms(10);
    return access(p, F_OK) == 0;
}

/* After go: checks the memory as child k sees it, reports as `name`. */
static void report(int k, const char *name) {
    wait_go();
    long bad = check(k);
    char msg[64];
    if (bad >= 0) snprintf(msg, sizeof msg, "bad word %ld\n", bad);
    else snprintf(msg, sizeof msg, "ok\n");
    put_file(name, msg);
}

static void child_main(int k) {
    char *own = mem + (size_t)own_at(k) * OWN;
    fill(own, OWN, 100 + k);
    if (madvise(own + OWN, OWN, MADV_DONTNEED) != 0) _exit(3);
    pid_t grandchild = -1;
    if (k == 0) {
        grandchild = fork();
        if (grandchild < 0) _exit(4);
        if (grandchild == 0) {
            put_file("setg", "set\n");
            report(0, "grandchild");
            _exit(0);
        }
        if (!wait_file("setg")) _exit(5);
    }
    char name[32];
    snprintf(name, sizeof name, "set%d", k);
    put_file(name, "set\n");
    snprintf(name, sizeof name, "child%d", k);
    report(k, name);
    if (grandchild > 0) waitpid(grandchild, NULL, 0);
    _exit(0);
}

/* The word of DIR/name: "ok" or why not. */
static void word_of(const char *name) {
    char p[4200], text[64] = "";
    CHECK(wait_file(name), "no word from %s", name);
    snprintf(p, sizeof p, "%s/%s", test_dir, name);
    int fd = open(p, O_RDONLY);
    CHECK(fd >= 0 && read(fd, text, sizeof text - 1) > 0, "reading %s's word", name);
    close(fd);
    CHECK(strncmp(text, "ok", 2) == 0, "%s: %s", name, text);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    if (argc > 2) size = strtoul(argv[2], NULL, 10) << 20;
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap: %s", strerror(errno));
    fill(mem, size, 7);
    if (argc > 3 && strcmp(argv[3], "lock") == 0)
        CHECK(mlock(mem, size) == 0, "mlock: %s", strerror(errno));
    pid_t kids[CHILDREN];
    for (int k = 0; k < CHILDREN; k++) {
        kids[k] = fork();
        CHECK(kids[k] >= 0, "fork: %s", strerror(errno));
        if (kids[k] == 0) child_main(k);
    }
    for (int k = 0; k < CHILDREN; k++) {
        char name[32];
        snprintf(name, sizeof name, "set%d", k);
        CHECK(wait_file(name), "child %d did not start", k);
    }
    ready();
    wait_go();
    long bad = check(-1);
    CHECK(bad < 0, "the parent's word %ld", bad);
    for (int k = 0; k < CHILDREN; k++) {
        char name[32];
        snprintf(name, sizeof name, "child%d", k);
        word_of(name);
        waitpid(kids[k], NULL, 0);
    }
    word_of("grandchild");
    pass();
}
