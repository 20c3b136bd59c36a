/* A process traced by another: the parent forks a child that sleeps, seizes
 * it with PTRACE_SEIZE (no stop) and holds it, like a debugger attached to a
 * running program. The child's PID goes to DIR/traced. Both run until
 * killed. */
#include "harness.h"
#include <signal.h>
#include <sys/ptrace.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        for (;;) sleep_ms(100);
    }
    if (ptrace(PTRACE_SEIZE, child, 0, 0) != 0) {
        kill(child, SIGKILL);
        return 1;
    }
    char buf[32];
    snprintf(buf, sizeof buf, "%d\n", child);
    put_file("traced", buf);
    ready();
    for (;;) sleep_ms(100);
}
