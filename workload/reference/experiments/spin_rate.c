/* How fast the emulation's spin loop runs per ms of thread CPU time, every ms, for N seconds.
 *
 * The loop is the one `workload/src/serve/cpu.rs` burns (256 rounds of rotate, xor, multiply per
 * spin). If the machine's speed per unit of CPU time were steady, every line would print about
 * the same number. Session 6, on the 2-core development machine (continuous, 10 s): about 900
 * for the first 2 s, then about 1,125 (p10 895, median 1,124, p90 1,146): the core's speed per
 * unit of CPU time moves by 25% within seconds (a busy hyperthread sibling or a vCPU sharing its
 * core with another tenant; nothing else of ours ran). Real Express's and FastAPI's CPU per
 * request moves with it; burns of a fixed CPU time do not (workload/reference/README.md).
 *
 *     gcc -O2 -o /tmp/spin_rate workload/reference/experiments/spin_rate.c
 *     /tmp/spin_rate 10 > spins.txt      # one line per ms of CPU: spins in that ms
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double thread_cpu_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static volatile uint64_t sink;

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 10;
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        double window = thread_cpu_us();
        long spins = 0;
        while (thread_cpu_us() - window < 1000.0) {
            for (int i = 0; i < 256; i++) {
                x = ((x << 5) | (x >> 59)) ^ (x * 31);
                __asm__ volatile("" : : "r"(x));
            }
            spins++;
        }
        sink = x;
        printf("%ld\n", spins);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < seconds);
    return 0;
}
