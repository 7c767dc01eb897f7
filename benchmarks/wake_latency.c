/* How long a thread that sleeps on a condition variable takes to run again after it is
 * signalled, as a Python thread that finds the GIL held sleeps on one until the holder
 * drops it (CPython's take_gil; a thread returning from cyrnn's compiled call waits there
 * whenever the other thread is in its Python work). Thread B works for the given
 * microseconds (default 20), stamps the time and signals; A stamps when it runs; 4000
 * rounds, percentiles of the latency. B stamps before it signals under the mutex, as
 * CPython's drop_gil signals, so the latency includes the wake-up call and the mutex's
 * handoff. On the Zen 4 of 2026-12-03 (a KVM guest whose kernel command line sets
 * haltpoll.guest_halt_poll_ns=0) the p50 was 10-28 us: what each GIL wait that sleeps
 * costs there, on top of the caches that cooled meanwhile (README, "Concurrent
 * scoring"). Not measured on bare metal here.
 *
 *   gcc -O2 -pthread benchmarks/wake_latency.c -o /tmp/wake_latency && /tmp/wake_latency 20
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int turn = 0;  /* read and written with __atomic builtins */
static double t_signal;  /* written and read under the mutex */
static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }
static void busy(double us) { double e = now() + us * 1e-6; while (now() < e); }
#define N 4000
static double lat[N];
static double busy_us;
static void* b_main(void* arg) {
    (void)arg;
    for (int i = 0; i < N; i++) {
        busy(busy_us);
        pthread_mutex_lock(&m);
        __atomic_store_n(&turn, 1, __ATOMIC_RELEASE);
        t_signal = now();
        pthread_cond_signal(&c);
        pthread_mutex_unlock(&m);
        while (__atomic_load_n(&turn, __ATOMIC_ACQUIRE) != 0)
            ;  /* A takes its turn back: spin */
    }
    return NULL;
}
static int cmp(const void* a, const void* b) { double x = *(double*)a, y = *(double*)b; return x < y ? -1 : x > y; }
int main(int argc, char** argv) {
    busy_us = argc > 1 ? atof(argv[1]) : 20;
    pthread_t b; pthread_create(&b, NULL, b_main, NULL);
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&m);
        while (__atomic_load_n(&turn, __ATOMIC_ACQUIRE) != 1) pthread_cond_wait(&c, &m);
        lat[i] = now() - t_signal;
        __atomic_store_n(&turn, 0, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&m);
    }
    pthread_join(b, NULL);
    qsort(lat, N, sizeof(double), cmp);
    printf("signal after %.0f us of work: wake-up latency p50 %.1f us, p90 %.1f us, p99 %.1f us\n", busy_us, lat[N/2]*1e6, lat[N*9/10]*1e6, lat[N*99/100]*1e6);
    return 0;
}
