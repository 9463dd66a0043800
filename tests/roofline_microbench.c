/* Independent check of the roofline ceilings (tests/test_roofline.py), written without TVM.

   usage: roofline_microbench <vnni|fma|triad> <threads> <size> <repeats>
     vnni  : <size> iterations of 12 independent vpdpbusd zmm per thread (128 int8 ops each)
     fma   : <size> iterations of 12 independent vfmadd231ps zmm per thread (32 fp32 ops each)
     triad : a[i] = b[i] + 3 c[i] over <size> doubles per array, split over the threads (STREAM:
             24 bytes counted per element)
   Prints one rate per repeat: GOP/s for vnni/fma, GB/s for triad. Threads start together after a
   barrier; a repeat's time runs from the first thread's start to the last thread's end, both read
   by the workers (the main thread may be descheduled when the barrier opens). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Inline asm keeps exactly 12 accumulator chains in zmm0-11 (compilers may add register copies
   around intrinsics); zmm12/zmm13 are the operands. */
#define X12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define VNNI(i) "vpdpbusd %%zmm13, %%zmm12, %%zmm" #i "\n\t"
#define FMA(i) "vfmadd231ps %%zmm13, %%zmm12, %%zmm" #i "\n\t"
#define ZERO(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n\t"
#define REGS "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", \
             "zmm12", "zmm13"

static void vnni_loop(long n) {
    static const int ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    __asm__ volatile("vmovdqu32 (%[o]), %%zmm12\n\t vmovdqu32 (%[o]), %%zmm13\n\t" X12(ZERO)
                     "1:\n\t" X12(VNNI) "dec %[n]\n\t jnz 1b\n\t"
                     : [n] "+r"(n) : [o] "r"(ones) : REGS, "cc", "memory");
}

static void fma_loop(long n) {
    static const float small[16] = {1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f,
                                    1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f};
    __asm__ volatile("vmovups (%[o]), %%zmm12\n\t vmovups (%[o]), %%zmm13\n\t" X12(ZERO)
                     "1:\n\t" X12(FMA) "dec %[n]\n\t jnz 1b\n\t"
                     : [n] "+r"(n) : [o] "r"(small) : REGS, "cc", "memory");
}

typedef struct {
    const char *mode;
    long size, begin, end;
    double *a, *b, *c;
    pthread_barrier_t *barrier;
    double started, done;
} job_t;

static void *worker(void *arg) {
    job_t *job = arg;
    pthread_barrier_wait(job->barrier);
    job->started = seconds();
    if (!strcmp(job->mode, "vnni")) {
        vnni_loop(job->size);
    } else if (!strcmp(job->mode, "fma")) {
        fma_loop(job->size);
    } else {
        double *restrict a = job->a, *restrict b = job->b, *restrict c = job->c;
        for (long i = job->begin; i < job->end; i++) a[i] = b[i] + 3.0 * c[i];
    }
    job->done = seconds();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s <vnni|fma|triad> <threads> <size> <repeats>\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    int threads = atoi(argv[2]), repeats = atoi(argv[4]);
    long size = atol(argv[3]);
    double *a = NULL, *b = NULL, *c = NULL;
    if (!strcmp(mode, "triad")) {
        a = malloc(size * sizeof(double));
        b = malloc(size * sizeof(double));
        c = malloc(size * sizeof(double));
        for (long i = 0; i < size; i++) a[i] = 0, b[i] = 1, c[i] = 2;
    }
    for (int r = 0; r < repeats; r++) {
        pthread_t tid[64];
        job_t jobs[64];
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, threads + 1);
        for (int t = 0; t < threads; t++) {
            jobs[t] = (job_t){mode, size, size * t / threads, size * (t + 1) / threads, a, b, c, &barrier, 0, 0};
            pthread_create(&tid[t], NULL, worker, &jobs[t]);
        }
        pthread_barrier_wait(&barrier);
        for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
        double start = jobs[0].started, end = jobs[0].done;
        for (int t = 1; t < threads; t++) {
            if (jobs[t].started < start) start = jobs[t].started;
            if (jobs[t].done > end) end = jobs[t].done;
        }
        pthread_barrier_destroy(&barrier);
        double rate;
        if (!strcmp(mode, "vnni")) rate = 12.0 * 128 * size * threads / (end - start) / 1e9;
        else if (!strcmp(mode, "fma")) rate = 12.0 * 32 * size * threads / (end - start) / 1e9;
        else rate = 24.0 * size / (end - start) / 1e9;
        printf("%.3f\n", rate);
    }
    return 0;
}
