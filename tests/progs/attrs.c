/* Process attributes: resource limits, name, personality, credentials
 * (uids, gids, supplementary groups) and the executable link. */
#include "harness.h"
#include <grp.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    struct rlimit rl = { 1000, 4000 };
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
    struct rlimit core = { 0, 0 }; setrlimit(RLIMIT_CORE, &core);
    prctl(PR_SET_NAME, "gw-attrs");
    personality(PER_LINUX | ADDR_NO_RANDOMIZE);
    char exe[4096]; ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1); exe[n > 0 ? n : 0] = 0;
    if (getuid() == 0) {
        gid_t groups[2] = { 100, 101 };
        CHECK(setgroups(2, groups) == 0, "setgroups");
        CHECK(setresgid(1000, 1001, 1002) == 0, "setresgid");
        CHECK(setresuid(2000, 2001, 2002) == 0, "setresuid");
    }
    ready();
    wait_go();
    struct rlimit g; getrlimit(RLIMIT_NOFILE, &g);
    CHECK(g.rlim_cur == 1000 && g.rlim_max == 4000, "RLIMIT_NOFILE %ld/%ld", (long)g.rlim_cur, (long)g.rlim_max);
    getrlimit(RLIMIT_CORE, &g); CHECK(g.rlim_max == 0, "RLIMIT_CORE hard %ld", (long)g.rlim_max);
    char name[32] = {0}; prctl(PR_GET_NAME, name);
    CHECK(strcmp(name, "gw-attrs") == 0, "name %s", name);
    CHECK(personality(0xffffffff) == (PER_LINUX | ADDR_NO_RANDOMIZE), "personality %#x", personality(0xffffffff));
    char now[4096]; n = readlink("/proc/self/exe", now, sizeof now - 1); now[n > 0 ? n : 0] = 0;
    CHECK(strcmp(now, exe) == 0, "exe link %s", now);
    uid_t r, e, s; gid_t gr, ge, gs;
    getresuid(&r, &e, &s); getresgid(&gr, &ge, &gs);
    if (r != 0 || e != 0) {
        CHECK(r == 2000 && e == 2001 && s == 2002, "uids %d %d %d", r, e, s);
        CHECK(gr == 1000 && ge == 1001 && gs == 1002, "gids %d %d %d", gr, ge, gs);
        gid_t groups[8]; int ng = getgroups(8, groups);
        CHECK(ng == 2 && groups[0] == 100 && groups[1] == 101, "groups (%d)", ng);
    }
    pass();
}
