/* Processes sharing memory copy-on-write while they all write to it: the
 * parent fills 64 MiB and forks 2 children (child 0 forks a grandchild);
 * then every process writes, one page a millisecond, a value of its own
 * into the first word of a page picked at random, and records it in its
 * own private table. A dump taken meanwhile (pre-copy: while they run)
 * must give each process its own view: the pages it wrote with its
 * values, the others as they were at the fork, whichever other process
 * wrote the same page. Pages still shared at the freeze may be restored
 * shared; a page one process wrote must not leak into another's view.
 * After go each checks every page and reports; the parent passes only if
 * all did. */
#include "harness.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096
#define SIZE (64UL << 20)
#define PAGES (SIZE / PG)

static char *mem;
static uint64_t *last; /* per page: the value this process wrote last, or 0 */

static int go_exists(void) {
    char p[4200];
    snprintf(p, sizeof p, "%s/go", test_dir);
    return access(p, F_OK) == 0;
}

static int wait_file(const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", test_dir, name);
    for (int i = 0; i < 3000 && access(p, F_OK) != 0; i++) sleep_ms(10);
    return access(p, F_OK) == 0;
}

/* Writes until go, then checks; returns the first bad page or -1. */
static long busy_then_check(uint64_t id) {
    uint64_t seq = 0, rnd = id * 0x2545F4914F6CDD1DULL + 1;
    while (!go_exists()) {
        for (int i = 0; i < 10; i++) {
            rnd ^= rnd << 13; rnd ^= rnd >> 7; rnd ^= rnd << 17;
            size_t p = rnd % PAGES;
            uint64_t v = (id << 40) | ++seq;
            ((uint64_t *)(mem + p * PG))[0] = v;
            last[p] = v;
            sleep_ms(1);
        }
    }
    const uint64_t *w = (const uint64_t *)mem;
    for (size_t p = 0; p < PAGES; p++) {
        size_t base = p * (PG / 8);
        uint64_t want0 = last[p] ? last[p] : pat(7, base);
        if (w[base] != want0) return (long)p;
        for (size_t j = 1; j < PG / 8; j++)
            if (w[base + j] != pat(7, base + j)) return (long)p;
    }
    return -1;
}

static void report(uint64_t id, const char *name) {
    long bad = busy_then_check(id);
    char msg[64];
    if (bad >= 0) snprintf(msg, sizeof msg, "bad page %ld\n", bad);
    else snprintf(msg, sizeof msg, "ok\n");
    put_file(name, msg);
}

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
    mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap: %s", strerror(errno));
    last = calloc(PAGES, sizeof *last);
    CHECK(last != NULL, "calloc");
    fill(mem, SIZE, 7);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        CHECK(kids[k] >= 0, "fork: %s", strerror(errno));
        if (kids[k] == 0) {
            pid_t g = -1;
            if (k == 0) {
                g = fork();
                if (g < 0) _exit(4);
                if (g == 0) {
                    put_file("setg", "set\n");
                    report(3, "grandchild");
                    _exit(0);
                }
                if (!wait_file("setg")) _exit(5);
            }
            char name[32];
            snprintf(name, sizeof name, "set%d", k);
            put_file(name, "set\n");
            snprintf(name, sizeof name, "child%d", k);
            report((uint64_t)k + 1, name);
            if (g > 0) waitpid(g, NULL, 0);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "set%d", k);
        CHECK(wait_file(name), "child %d did not start", k);
    }
    ready();
    long bad = busy_then_check(9);
    CHECK(bad < 0, "the parent's page %ld", bad);
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "child%d", k);
        word_of(name);
        waitpid(kids[k], NULL, 0);
    }
    word_of("grandchild");
    pass();
}
