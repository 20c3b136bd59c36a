/* A program holding a connected TCP socket (not supported yet by dump), and
 * counting in a log file so the test can see it keeps running. */
#include "harness.h"
#include <arpa/inet.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    setup(argc, argv);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    CHECK(bind(l, (void *)&a, sizeof a) == 0 && listen(l, 4) == 0, "listen");
    getsockname(l, (void *)&a, &al);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c, (void *)&a, sizeof a) == 0, "connect");
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    ready();
    char p[4200]; snprintf(p, sizeof p, "%s/count", test_dir);
    for (long n = 0;; n++) {
        FILE *f = fopen(p, "w"); fprintf(f, "%ld\n", n); fclose(f);
        sleep_ms(20);
    }
}
