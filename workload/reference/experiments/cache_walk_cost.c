/* Does a fixed amount of work cost more CPU time after the thread has slept? For a spin loop
 * (the emulation's CPU burns: arithmetic, no memory) and for a walk through a buffer (one load
 * per 64-byte line in a random cycle, each load waiting for the one before, as interpreter code
 * chasing its objects does), back to back or after IDLE_US of sleep before each repetition.
 *
 * Session 9, on the 2-core development machine (AMD EPYC, 1 MiB L2 per core, 32 MiB L3), medians
 * of 150-200 repetitions, us of thread CPU per repetition (back to back / 1 ms / 20 ms of sleep):
 *   spin, 40 x 256 rounds:  9.1 / 9.3 / 10.2         (the clock only)
 *   walk of 512 KiB:       42.7 / 72.9 / 266.2
 *   walk of 1 MiB:        159.0 / 232.1 / 1,332.6
 *   walk of 4 MiB:      1,007.7 / 1,084.9 / 5,573.3
 * A spin loop has no cache to lose; a walk loses what the idle moment let go. That is why
 * LOOPSCALE_WORKING_SET_KIB is a walk (workload/src/serve/working_set.rs).
 *
 *     gcc -O2 -o /tmp/cache_walk_cost workload/reference/experiments/cache_walk_cost.c
 *     /tmp/cache_walk_cost KIB SPINS IDLE_US REPETITIONS   # KIB 0: spin only; SPINS 0: walk only
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double cpu_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static volatile uint64_t sink;

static uint64_t spin(long n) {
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (long j = 0; j < n; j++)
        for (int i = 0; i < 256; i++) {
            x = ((x << 5) | (x >> 59)) ^ (x * 31);
            __asm__ volatile("" : : "r"(x));
        }
    return x;
}

/* ring[line * 8] holds the index (in size_t units) of the next line of the cycle. */
static size_t *ring;
static size_t lines;

static void make_ring(size_t bytes) {
    lines = bytes / 64;
    ring = aligned_alloc(64, lines * 64);
    size_t *order = malloc(lines * sizeof(size_t));
    for (size_t i = 0; i < lines; i++) order[i] = i;
    for (size_t i = lines - 1; i > 0; i--) {
        size_t j = (size_t)rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < lines; i++) ring[order[i] * 8] = order[(i + 1) % lines] * 8;
    free(order);
}

static uint64_t walk(void) {
    size_t p = 0;
    for (size_t i = 0; i < lines; i++) p = ring[p];
    return p;
}

static int by_value(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b;
    return d < 0 ? -1 : d > 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s KIB SPINS IDLE_US REPETITIONS\n", argv[0]);
        return 2;
    }
    long kib = atol(argv[1]), spins = atol(argv[2]);
    int idle_us = atoi(argv[3]), reps = atoi(argv[4]);
    if (kib < 0 || spins < 0 || idle_us < 0 || reps < 1 || reps > 100000) {
        fprintf(stderr, "KIB, SPINS, IDLE_US >= 0; REPETITIONS 1-100000\n");
        return 2;
    }
    if (kib) make_ring((size_t)kib * 1024);
    double *spin_us = calloc(reps, sizeof(double)), *walk_us = calloc(reps, sizeof(double));
    for (int r = 0; r < reps; r++) {
        if (idle_us) usleep(idle_us);
        double a = cpu_us();
        sink = spin(spins);
        double b = cpu_us();
        if (kib) sink = walk();
        double c = cpu_us();
        spin_us[r] = b - a;
        walk_us[r] = c - b;
    }
    qsort(spin_us, reps, sizeof(double), by_value);
    qsort(walk_us, reps, sizeof(double), by_value);
    printf("KiB %ld, idle %d us: spin median %.1f us, walk median %.1f us\n", kib, idle_us,
           spin_us[reps / 2], walk_us[reps / 2]);
    return 0;
}
