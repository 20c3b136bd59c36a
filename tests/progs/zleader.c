/* A zombie thread-group leader: the main thread calls pthread_exit while
 * another thread runs on. The dump must refuse the process (naming it and
 * why) and leave it running: the thread then still answers. */
#include "harness.h"
#include <pthread.h>

static pid_t main_pid;

static char state_of_main(void) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", main_pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

static void *worker(void *arg) {
    (void)arg;
    while (state_of_main() != 'Z') sleep_ms(1);
    ready();
    wait_go();
    if (state_of_main() != 'Z') fail("the main thread is back: %c", state_of_main());
    pass();
    return NULL;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    main_pid = getpid();
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) return 1;
    pthread_exit(NULL);
}
