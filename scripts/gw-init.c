/* PID 1 of a simulated host (scripts/cluster.sh): reaps every process that
 * ends in its PID namespace, and ends (taking the namespace with it) on
 * SIGTERM or SIGINT. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_chld(int s) { (void)s; }
static void on_term(int s) { (void)s; stop = 1; }

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop) {
        pid_t p = waitpid(-1, NULL, 0);
        if (p < 0 && errno == ECHILD)
            pause();
    }
    return 0;
}
