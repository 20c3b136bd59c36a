/* Threads: counters advancing in every thread, threads blocked in
 * nanosleep, read on a pipe, a futex (condition variable) and poll; FPU/AVX
 * registers kept live across the dump; thread names and masks; join. */
#include "harness.h"
#include <immintrin.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>

static volatile int stop;
static volatile long c_sleep, c_poll, c_avx;
static volatile int avx_bad, read_ok, cond_ok, mask_ok;
static int pfd[2], idle[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int flag;

static void *sleeper(void *a) {
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR1); pthread_sigmask(SIG_BLOCK, &s, NULL);
    pthread_setname_np(pthread_self(), "t-sleeper");
    while (!stop) { struct timespec ts = {0, 5000000}; nanosleep(&ts, NULL); c_sleep++; }
    sigset_t now; pthread_sigmask(SIG_BLOCK, NULL, &now);
    mask_ok = sigismember(&now, SIGUSR1);
    return a;
}
static void *reader(void *a) {
    char buf[16] = {0};
    ssize_t n = read(pfd[0], buf, 5);
    read_ok = n == 5 && memcmp(buf, "hello", 5) == 0;
    return a;
}
static void *waiter(void *a) {
    pthread_mutex_lock(&mu);
    while (!flag) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    cond_ok = 1;
    return a;
}
static void *poller(void *a) {
    while (!stop) { struct pollfd p = { idle[0], POLLIN, 0 }; poll(&p, 1, 5); c_poll++; }
    return a;
}
__attribute__((target("avx"))) static void *avx(void *a) {
    __m256d v = _mm256_set_pd(4, 3, 2, 1), one = _mm256_set1_pd(1.0);
    long n = 0;
    while (!stop) {
        v = _mm256_add_pd(v, one); n++;
        double d[4]; _mm256_storeu_pd(d, v);
        if (d[0] != 1 + n || d[3] != 4 + n) avx_bad = 1;
        if ((n & 0xfffff) == 0) c_avx = n;
    }
    return a;
}

int main(int argc, char **argv) {
    setup(argc, argv);
    CHECK(pipe(pfd) == 0 && pipe(idle) == 0, "pipe");
    pthread_t t[5];
    void *(*fn[5])(void *) = { sleeper, reader, waiter, poller, avx };
    for (int i = 0; i < 5; i++) pthread_create(&t[i], NULL, fn[i], NULL);
    sleep_ms(100);
    ready();
    wait_go();
    long s0 = c_sleep, p0 = c_poll, a0 = c_avx;
    sleep_ms(300);
    CHECK(c_sleep > s0, "the nanosleep thread stopped counting");
    CHECK(c_poll > p0, "the poll thread stopped counting");
    CHECK(c_avx > a0, "the AVX thread stopped counting");
    CHECK(!avx_bad, "AVX register state was corrupted");
    char name[32]; pthread_getname_np(t[0], name, sizeof name);
    CHECK(strcmp(name, "t-sleeper") == 0, "thread name is %s", name);
    CHECK(write(pfd[1], "hello", 5) == 5, "write pipe");
    pthread_mutex_lock(&mu); flag = 1; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
    stop = 1;
    for (int i = 0; i < 5; i++) CHECK(pthread_join(t[i], NULL) == 0, "join %d", i);
    CHECK(read_ok, "the thread blocked in read() did not get its data");
    CHECK(cond_ok, "the thread waiting on the condition variable did not wake");
    CHECK(mask_ok, "a thread lost its signal mask");
    pass();
}
