/* Peak-throughput probes for benchmarks/peak.py (compiled there with gcc at first use).

   usage: peak_kernels <vnni|fma> <threads> <iters> <repeats> [cpu0,cpu1,...]

   Each thread runs `iters` iterations of an unrolled loop of ACC independent accumulator chains
   (vpdpbusd zmm, or vfmadd231ps zmm); threads are pinned to the listed CPUs (default 0..threads-1)
   and start together after a barrier; time = first thread's start to last thread's end. One line
   per repeat on stdout: "<seconds> <ops> <checksum>", where ops counts 128 ops per vpdpbusd
   zmm (16 lanes x 4 MACs x 2) and 32 per vfmadd zmm (16 lanes x 2). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ACC 16 /* independent accumulators: > latency x issue width of both units on current x86 cores */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The hot loops are inline asm so that exactly ACC independent accumulator chains run, with no
   register copies (gcc 12 otherwise inserts a vmovdqa per vpdpbusd, which halves the rate):
   zmm0-15 accumulate, zmm16/zmm17 hold the operands. */
#define REP16(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) \
                  op(8) op(9) op(10) op(11) op(12) op(13) op(14) op(15)
#define DPB(i) "vpdpbusd %%zmm17, %%zmm16, %%zmm" #i "\n\t"
#define FMA(i) "vfmadd231ps %%zmm17, %%zmm16, %%zmm" #i "\n\t"
#define CLOBBER16 "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", \
                  "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17"

static double vnni_loop(long iters, const int32_t *seed) {
    int32_t out[16];
    __asm__ volatile(
        "vmovdqu32 (%[s]), %%zmm16\n\t"
        "vmovdqu32 64(%[s]), %%zmm17\n\t"
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
        "vmovdqa32 %%zmm0, %%zmm1\n\t vmovdqa32 %%zmm0, %%zmm2\n\t vmovdqa32 %%zmm0, %%zmm3\n\t"
        "vmovdqa32 %%zmm0, %%zmm4\n\t vmovdqa32 %%zmm0, %%zmm5\n\t vmovdqa32 %%zmm0, %%zmm6\n\t"
        "vmovdqa32 %%zmm0, %%zmm7\n\t vmovdqa32 %%zmm0, %%zmm8\n\t vmovdqa32 %%zmm0, %%zmm9\n\t"
        "vmovdqa32 %%zmm0, %%zmm10\n\t vmovdqa32 %%zmm0, %%zmm11\n\t vmovdqa32 %%zmm0, %%zmm12\n\t"
        "vmovdqa32 %%zmm0, %%zmm13\n\t vmovdqa32 %%zmm0, %%zmm14\n\t vmovdqa32 %%zmm0, %%zmm15\n\t"
        "1:\n\t"
        REP16(DPB)
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        "vpaddd %%zmm1, %%zmm0, %%zmm0\n\t vpaddd %%zmm15, %%zmm14, %%zmm14\n\t"
        "vpaddd %%zmm14, %%zmm0, %%zmm0\n\t"
        "vmovdqu32 %%zmm0, (%[o])\n\t"
        : [n] "+r"(iters)
        : [s] "r"(seed), [o] "r"(out)
        : CLOBBER16, "memory", "cc");
    double r = 0;
    for (int i = 0; i < 16; i++) r += out[i];
    return r;
}

static double fma_loop(long iters, const float *seed) {
    float out[16];
    __asm__ volatile(
        "vmovups (%[s]), %%zmm16\n\t"
        "vmovups 64(%[s]), %%zmm17\n\t"
        "vxorps %%zmm0, %%zmm0, %%zmm0\n\t"
        "vmovaps %%zmm0, %%zmm1\n\t vmovaps %%zmm0, %%zmm2\n\t vmovaps %%zmm0, %%zmm3\n\t"
        "vmovaps %%zmm0, %%zmm4\n\t vmovaps %%zmm0, %%zmm5\n\t vmovaps %%zmm0, %%zmm6\n\t"
        "vmovaps %%zmm0, %%zmm7\n\t vmovaps %%zmm0, %%zmm8\n\t vmovaps %%zmm0, %%zmm9\n\t"
        "vmovaps %%zmm0, %%zmm10\n\t vmovaps %%zmm0, %%zmm11\n\t vmovaps %%zmm0, %%zmm12\n\t"
        "vmovaps %%zmm0, %%zmm13\n\t vmovaps %%zmm0, %%zmm14\n\t vmovaps %%zmm0, %%zmm15\n\t"
        "1:\n\t"
        REP16(FMA)
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        "vaddps %%zmm1, %%zmm0, %%zmm0\n\t vaddps %%zmm15, %%zmm14, %%zmm14\n\t"
        "vaddps %%zmm14, %%zmm0, %%zmm0\n\t"
        "vmovups %%zmm0, (%[o])\n\t"
        : [n] "+r"(iters)
        : [s] "r"(seed), [o] "r"(out)
        : CLOBBER16, "memory", "cc");
    double r = 0;
    for (int i = 0; i < 16; i++) r += out[i];
    return r;
}

typedef struct {
    int vnni, cpu;
    long iters;
    pthread_barrier_t *start;
    double sink, t0, t1;
} job_t;

static void *worker(void *p) {
    job_t *j = (job_t *)p;
    if (j->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(j->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    int32_t iseed[32];
    float fseed[32];
    for (int i = 0; i < 32; i++) { iseed[i] = 0x01020304 + i; fseed[i] = 1.0f - 1e-7f * i; }
    pthread_barrier_wait(j->start);
    j->t0 = now();
    j->sink = j->vnni ? vnni_loop(j->iters, iseed) : fma_loop(j->iters, fseed);
    j->t1 = now();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s <vnni|fma> <threads> <iters> <repeats> [cpu,cpu,...]\n", argv[0]);
        return 2;
    }
    int vnni = strcmp(argv[1], "vnni") == 0;
    int threads = atoi(argv[2]);
    long iters = atol(argv[3]);
    int repeats = atoi(argv[4]);
    int cpus[64];
    for (int t = 0; t < threads && t < 64; t++) cpus[t] = t;
    if (argc > 5) {
        char *s = argv[5];
        for (int t = 0; t < threads && s && *s; t++) {
            cpus[t] = atoi(s);
            s = strchr(s, ',');
            if (s) s++;
        }
    }
    if (threads < 1 || threads > 64) return 2;
    double ops_per_iter = ACC * (vnni ? 128.0 : 32.0);
    for (int r = 0; r < repeats; r++) {
        pthread_t th[64];
        job_t jobs[64];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)threads);
        for (int t = 0; t < threads; t++) {
            jobs[t] = (job_t){vnni, cpus[t], iters, &start, 0.0, 0.0, 0.0};
            pthread_create(&th[t], NULL, worker, &jobs[t]);
        }
        for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
        /* wall time from the first thread's start to the last one's end (measured by the threads
           themselves: the main thread may be descheduled while they run) */
        double t0 = jobs[0].t0, t1 = jobs[0].t1;
        for (int t = 1; t < threads; t++) {
            if (jobs[t].t0 < t0) t0 = jobs[t].t0;
            if (jobs[t].t1 > t1) t1 = jobs[t].t1;
        }
        double dt = t1 - t0;
        pthread_barrier_destroy(&start);
        double sink = 0;
        for (int t = 0; t < threads; t++) sink += jobs[t].sink;
        printf("%.9f %.0f %g\n", dt, ops_per_iter * (double)iters * threads, sink);
        fflush(stdout);
    }
    return 0;
}
