/* A chroot'ed process: it makes DIR/sub with a file, chroots into DIR
 * (the jail), works in /sub, and keeps a descriptor of the file. After
 * restore it checks it is still confined: "/" is the jail (same inode),
 * its cwd is /sub, a file outside the jail cannot be reached, the file
 * inside opens by its jail path, and the old descriptor still reads. The
 * harness files (ready, go, result) stay at DIR's path: inside the jail
 * that path is a symlink to the jail's root, so the same files are found
 * whether the process is confined or not (a copy that lost its chroot
 * reports FAIL instead of writing anywhere else). */
#include "harness.h"
#include <libgen.h>
#include <sys/stat.h>

/* mkdir -p of PATH. */
static void mkdirs(const char *path) {
    char b[4400];
    snprintf(b, sizeof b, "%s", path);
    for (char *p = b + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        CHECK(mkdir(b, 0755) == 0 || errno == EEXIST, "mkdir %s: errno %d", b, errno);
        *p = '/';
    }
    CHECK(mkdir(b, 0755) == 0 || errno == EEXIST, "mkdir %s: errno %d", b, errno);
}

int main(int argc, char **argv) {
    setup(argc, argv);
    char jail[4200], sub[4300], data[4400];
    snprintf(jail, sizeof jail, "%s", test_dir);
    snprintf(sub, sizeof sub, "%s/sub", jail);
    snprintf(data, sizeof data, "%s/data", sub);
    CHECK(mkdir(sub, 0755) == 0 || errno == EEXIST, "mkdir sub: errno %d", errno);
    int w = open(data, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(w >= 0 && write(w, "hello", 5) == 5, "writing the data file");
    close(w);
    struct stat want;
    CHECK(stat(jail, &want) == 0, "stat jail");
    /* DIR's own path inside the jail leads back to the jail's root. */
    char inner[8600], parent[8600];
    snprintf(inner, sizeof inner, "%s%s", jail, test_dir);
    snprintf(parent, sizeof parent, "%s", inner);
    mkdirs(dirname(parent));
    CHECK(symlink("/", inner) == 0 || errno == EEXIST, "symlink %s: errno %d", inner, errno);
    CHECK(chroot(jail) == 0, "chroot: errno %d", errno);
    CHECK(chdir("/sub") == 0, "chdir /sub: errno %d", errno);
    int fd = open("/sub/data", O_RDONLY);
    CHECK(fd >= 0, "open /sub/data in the jail: errno %d", errno);
    ready();
    wait_go();
    struct stat root;
    CHECK(stat("/", &root) == 0, "stat /");
    CHECK(root.st_ino == want.st_ino && root.st_dev == want.st_dev,
          "/ is no longer the jail (inode %lu, the jail's %lu)", (unsigned long)root.st_ino,
          (unsigned long)want.st_ino);
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, "/sub") == 0, "cwd %s, not /sub", cwd);
    CHECK(access("/etc/passwd", F_OK) != 0 && errno == ENOENT, "/etc/passwd reachable: not confined");
    char b[8] = {0};
    CHECK(pread(fd, b, 5, 0) == 5 && memcmp(b, "hello", 5) == 0, "the old descriptor reads %s", b);
    int again = open("data", O_RDONLY);
    CHECK(again >= 0, "open data from the cwd: errno %d", errno);
    pass();
    return 0;
}
