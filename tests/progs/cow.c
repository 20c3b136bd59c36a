/* Writes while it is dumped with --leave-running, to prove the copy of its
 * memory is consistent. It sweeps a generation number g through 64 MiB, page
 * by page; before overwriting a page it checks the page holds the previous
 * generation. A copy that mixed pages from different moments fails that
 * check on the next sweeps after restore.
 * `cow DIR` writes without pause (faster than memory can be copied: the
 * dump takes a copy-on-write snapshot); `cow DIR slow`, once ready, pauses
 * 1 ms every 4 pages (~15 MiB/s) until DIR/go appears, so a pre-copy
 * converges while pages keep changing under it. `cow DIR fork` is `slow`
 * in two processes: it forks once before the sweeps, and the child checks
 * its own copy the same way, reporting to the parent through DIR/child
 * ("ok" or "bad N") after DIR/go; the parent passes only if both did. */
#include "harness.h"
#include <sys/wait.h>

#define PG 4096
#define PAGES (64 * 256)
static unsigned char *buf;
static volatile long bad_page = -1;

static int page_is(long i, uint64_t g) {
    const uint64_t *w = (const uint64_t *)(buf + i * PG);
    for (int k = 0; k < PG / 8; k++) if (w[k] != g) return 0;
    return 1;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    int forked = argc > 2 && strcmp(argv[2], "fork") == 0;
    int slow = forked || (argc > 2 && strcmp(argv[2], "slow") == 0);
    buf = aligned_alloc(PG, (size_t)PAGES * PG);
    memset(buf, 0, (size_t)PAGES * PG);
    pid_t child = forked ? fork() : -1;
    if (child < 0 && forked) fail("fork");
    int is_child = forked && child == 0;
    uint64_t g = 1;
    long sweeps_after_go = -1;
    char go[4200]; snprintf(go, sizeof go, "%s/go", test_dir);
    for (;; g++) {
        for (long i = 0; i < PAGES; i++) {
            if (!page_is(i, g - 1) && bad_page < 0) bad_page = i;
            uint64_t *w = (uint64_t *)(buf + i * PG);
            for (int k = 0; k < PG / 8; k++) w[k] = g;
            if (slow && g > 3 && sweeps_after_go < 0 && i % 4 == 0) {
                if (i % 256 == 0 && access(go, F_OK) == 0) sweeps_after_go = 0;
                else sleep_ms(1);
            }
        }
        if (g == 3 && !is_child) ready();
        if (sweeps_after_go < 0 && access(go, F_OK) == 0) sweeps_after_go = 0;
        if (sweeps_after_go >= 0 && ++sweeps_after_go > 2) break;
    }
    if (is_child) {
        char msg[64];
        if (bad_page >= 0) snprintf(msg, sizeof msg, "bad %ld\n", bad_page);
        else snprintf(msg, sizeof msg, "ok\n");
        put_file("child", msg);
        _exit(0);
    }
    if (bad_page >= 0) fail("page %ld did not hold the previous generation", bad_page);
    if (forked) {
        char p[4200], text[64] = "";
        snprintf(p, sizeof p, "%s/child", test_dir);
        for (int i = 0; i < 1000 && access(p, F_OK) != 0; i++) sleep_ms(10);
        FILE *f = fopen(p, "r");
        if (!f || !fgets(text, sizeof text, f)) fail("no word from the child");
        fclose(f);
        unlink(p);
        if (strncmp(text, "ok", 2) != 0) fail("the child: %s", text);
        waitpid(child, NULL, 0);
    }
    pass();
}
