/* PID 1 of a simulated host (scripts/cluster.sh): reaps every process that
 * ends in its PID namespace, and ends (taking the namespace with it) on
 * SIGTERM or SIGINT. */
#include <errno.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop, by_pid;
static void on_chld(int s) { (void)s; }
static void on_term(int s, siginfo_t *si, void *u) { (void)u; stop = s; by_pid = si->si_pid; }

/* argv[1], if given: a file that says why this init ended. */
int main(int argc, char **argv) {
    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_sigaction = on_term;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop) {
        pid_t p = waitpid(-1, NULL, 0);
        if (p < 0 && errno == ECHILD)
            pause();
    }
    if (argc > 1) {
        FILE *f = fopen(argv[1], "w");
        if (f) {
            fprintf(f, "ended by signal %d from pid %d\n", (int)stop, (int)by_pid);
            fclose(f);
        }
    }
    return 0;
}
