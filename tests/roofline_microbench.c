/* Independent check of the roofline ceilings (tests/test_roofline.py), written without TVM.

   usage: roofline_microbench <mode> <threads> <size> <repeats>
     vpdpbusd-zmm : <size> iterations of 12 independent vpdpbusd zmm per thread (128 int8 ops each; AVX-512 VNNI)
     vpmaddwd-zmm : <size> iterations of 12 independent vpmaddwd zmm + vpaddd per thread (64 ops; AVX-512BW)
     fma-zmm      : <size> iterations of 12 independent vfmadd231ps zmm per thread (32 fp32 ops; AVX-512F)
     vpmaddwd-ymm : <size> iterations of 12 independent vpmaddwd ymm + vpaddd per thread (32 ops; AVX2)
     fma-ymm      : <size> iterations of 12 independent vfmadd231ps ymm per thread (16 fp32 ops; FMA)
     triad        : a[i] = b[i] + 3 c[i] over <size> doubles per array, split over the threads (STREAM:
                    24 bytes counted per element)
   Prints one rate per repeat: GOP/s for the compute modes, GB/s for triad. Threads start together
   after a barrier; a repeat's time runs from the first thread's start to the last thread's end, both
   read by the workers (the main thread may be descheduled when the barrier opens).

   A mode whose instructions this CPU lacks exits with status 3 before running anything: the caller
   checks the CPU first, this is the second line of defence against SIGILL. Built with plain -O2 (no
   -m flags), so the C parts use only baseline x86-64 instructions on every host. */
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

/* Inline asm keeps exactly 12 accumulator chains in registers 0-11 (compilers may add register
   copies around intrinsics); registers 12/13 are the operands, 14/15 the vpmaddwd products. With
   ymm that is all 16 registers AVX2 has, and nothing spills. The products of vpmaddwd do not depend
   on the accumulators, so every chain is one vpaddd (latency 1) deep: the loop runs at the
   multiplier's throughput. */
#define X12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define DPBUSD_Z(i) "vpdpbusd %%zmm13, %%zmm12, %%zmm" #i "\n\t"
#define FMA_Z(i) "vfmadd231ps %%zmm13, %%zmm12, %%zmm" #i "\n\t"
#define FMA_Y(i) "vfmadd231ps %%ymm13, %%ymm12, %%ymm" #i "\n\t"
#define ZERO_Z(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n\t"
#define ZERO_Y(i) "vpxor %%ymm" #i ", %%ymm" #i ", %%ymm" #i "\n\t"
#define zmm_CLOBBERS "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", \
            "zmm12", "zmm13", "zmm14", "zmm15"
#define ymm_CLOBBERS "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10", "ymm11", \
            "ymm12", "ymm13", "ymm14", "ymm15"
/* vpmaddwd into the product register of chain i's parity, then add it to accumulator i */
#define PAIR_Z(i, p) "vpmaddwd %%zmm13, %%zmm12, %%zmm" #p "\n\t vpaddd %%zmm" #p ", %%zmm" #i ", %%zmm" #i "\n\t"
#define PAIR_Y(i, p) "vpmaddwd %%ymm13, %%ymm12, %%ymm" #p "\n\t vpaddd %%ymm" #p ", %%ymm" #i ", %%ymm" #i "\n\t"
#define PAIRS(P) P(0, 14) P(1, 15) P(2, 14) P(3, 15) P(4, 14) P(5, 15) P(6, 14) P(7, 15) P(8, 14) P(9, 15) \
                 P(10, 14) P(11, 15)

static const int ONES[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const float SMALL[16] = {1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f,
                                1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f};

/* One probe loop: load the two operand registers from ``data``, zero the accumulators, then run
   ``body`` (12 chains) n times. */
#define PROBE_LOOP(name, load, zero, body, data, regs)                                                      \
    static void name(long n) {                                                                            \
        __asm__ volatile(load " (%[o]), %%" #regs "12\n\t " load " (%[o]), %%" #regs "13\n\t" X12(zero)  \
                         "1:\n\t" body "dec %[n]\n\t jnz 1b\n\t vzeroupper\n\t"                         \
                         : [n] "+r"(n) : [o] "r"(data) : regs##_CLOBBERS, "cc", "memory");                  \
    }

PROBE_LOOP(vpdpbusd_zmm, "vmovdqu32", ZERO_Z, X12(DPBUSD_Z), ONES, zmm)
PROBE_LOOP(vpmaddwd_zmm, "vmovdqu32", ZERO_Z, PAIRS(PAIR_Z), ONES, zmm)
PROBE_LOOP(fma_zmm, "vmovups", ZERO_Z, X12(FMA_Z), SMALL, zmm)
PROBE_LOOP(vpmaddwd_ymm, "vmovdqu", ZERO_Y, PAIRS(PAIR_Y), ONES, ymm)
PROBE_LOOP(fma_ymm, "vmovups", ZERO_Y, X12(FMA_Y), SMALL, ymm)

typedef struct {
    const char *name;
    void (*loop)(long);
    double ops_per_iteration;                 /* 12 instructions x ops per instruction */
    int (*supported)(void);
    const char *feature;
} bench_mode;

static int has_avx512vnni(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni"); }
static int has_avx512bw(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }
static int has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }
static int has_avx2(void) { return __builtin_cpu_supports("avx2"); }
static int has_fma(void) { return __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma"); }

static const bench_mode MODES[] = {
    {"vpdpbusd-zmm", vpdpbusd_zmm, 12.0 * 128, has_avx512vnni, "avx512vnni"},
    {"vpmaddwd-zmm", vpmaddwd_zmm, 12.0 * 64, has_avx512bw, "avx512bw"},
    {"fma-zmm", fma_zmm, 12.0 * 32, has_avx512f, "avx512f"},
    {"vpmaddwd-ymm", vpmaddwd_ymm, 12.0 * 32, has_avx2, "avx2"},
    {"fma-ymm", fma_ymm, 12.0 * 16, has_fma, "fma"},
    {"triad", NULL, 0, NULL, NULL},
};

typedef struct {
    const bench_mode *mode;
    long size, begin, end;
    double *a, *b, *c;
    pthread_barrier_t *barrier;
    double started, done;
} job_t;

static void *worker(void *arg) {
    job_t *job = arg;
    pthread_barrier_wait(job->barrier);
    job->started = seconds();
    if (job->mode->loop) {
        job->mode->loop(job->size);
    } else {
        double *restrict a = job->a, *restrict b = job->b, *restrict c = job->c;
        for (long i = job->begin; i < job->end; i++) a[i] = b[i] + 3.0 * c[i];
    }
    job->done = seconds();
    return NULL;
}

static const bench_mode *find_mode(const char *name) {
    for (size_t i = 0; i < sizeof MODES / sizeof MODES[0]; i++)
        if (!strcmp(MODES[i].name, name)) return &MODES[i];
    return NULL;
}

int main(int argc, char **argv) {
    const bench_mode *mode = argc == 5 ? find_mode(argv[1]) : NULL;
    if (!mode) {
        fprintf(stderr, "usage: %s <vpdpbusd-zmm|vpmaddwd-zmm|fma-zmm|vpmaddwd-ymm|fma-ymm|triad> "
                        "<threads> <size> <repeats>\n", argv[0]);
        return 2;
    }
    if (mode->supported && !mode->supported()) {
        fprintf(stderr, "%s: this CPU lacks %s\n", mode->name, mode->feature);
        return 3;
    }
    int threads = atoi(argv[2]), repeats = atoi(argv[4]);
    long size = atol(argv[3]);
    if (threads < 1 || threads > 64) return 2;
    double *a = NULL, *b = NULL, *c = NULL;
    if (!mode->loop) {
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
        double work = mode->loop ? mode->ops_per_iteration * size * threads : 24.0 * size;
        printf("%.3f\n", work / (end - start) / 1e9);
    }
    return 0;
}
