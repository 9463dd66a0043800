/* Peak-throughput probes for benchmarks/peak.py (compiled there with gcc at first use).

   usage: peak_kernels <kind> <threads> <iters> <repeats> [cpu0,cpu1,...]
     kind: vnni          vpdpbusd zmm            (AVX-512 VNNI; 16 lanes x 4 MACs x 2 = 128 ops)
           vpmaddwd-zmm  vpmaddwd zmm + vpaddd   (AVX-512BW; 16 lanes x 2 MACs x 2 = 64 ops)
           fma           vfmadd231ps zmm         (AVX-512F; 16 lanes x 2 = 32 ops)
           vpmaddwd-ymm  vpmaddwd ymm + vpaddd   (AVX2; 8 lanes x 2 MACs x 2 = 32 ops)
           fma-ymm       vfmadd231ps ymm         (FMA; 8 lanes x 2 = 16 ops)

   Each thread runs `iters` iterations of an unrolled loop of independent accumulator chains of that
   instruction (16 with zmm, which has 32 registers; 12 with ymm, whose 16 registers must also hold
   the operands and products); threads are pinned to the listed CPUs (default 0..threads-1) and start
   together after a barrier; time = first thread's start to last thread's end. One line per repeat on
   stdout: "<seconds> <ops> <checksum>".

   A kind whose instructions this CPU lacks exits with status 3 before running anything. Compiled
   without -m flags: the C code around the inline asm is baseline x86-64 and runs on every host. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The hot loops are inline asm so that exactly the intended chains run, with no register copies
   (gcc 12 otherwise inserts a vmovdqa per vpdpbusd, which halves the rate). zmm: zmm0-15
   accumulate, zmm16/17 hold the operands, zmm18/19 the vpmaddwd products. ymm: ymm0-11 accumulate,
   ymm12/13 operands, ymm14/15 products. vpmaddwd's products do not depend on the accumulators, so
   every chain is one vpaddd deep and the loop runs at the multiplier's throughput. */
#define REP12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define REP16(op) REP12(op) op(12) op(13) op(14) op(15)
#define DPB_Z(i) "vpdpbusd %%zmm17, %%zmm16, %%zmm" #i "\n\t"
#define FMA_Z(i) "vfmadd231ps %%zmm17, %%zmm16, %%zmm" #i "\n\t"
#define FMA_Y(i) "vfmadd231ps %%ymm13, %%ymm12, %%ymm" #i "\n\t"
#define PAIR_Z(i, p) "vpmaddwd %%zmm17, %%zmm16, %%zmm" #p "\n\t vpaddd %%zmm" #p ", %%zmm" #i ", %%zmm" #i "\n\t"
#define PAIR_Y(i, p) "vpmaddwd %%ymm13, %%ymm12, %%ymm" #p "\n\t vpaddd %%ymm" #p ", %%ymm" #i ", %%ymm" #i "\n\t"
#define PAIRS12(P, a, b) P(0, a) P(1, b) P(2, a) P(3, b) P(4, a) P(5, b) P(6, a) P(7, b) P(8, a) P(9, b) \
                         P(10, a) P(11, b)
#define PAIRS16(P, a, b) PAIRS12(P, a, b) P(12, a) P(13, b) P(14, a) P(15, b)
#define ZERO_Z(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n\t"
#define ZERO_Y(i) "vpxor %%ymm" #i ", %%ymm" #i ", %%ymm" #i "\n\t"
#define CLOBBER_Z "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", "zmm10", "zmm11", \
                  "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17", "zmm18", "zmm19"
#define CLOBBER_Y "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10", "ymm11", \
                  "ymm12", "ymm13", "ymm14", "ymm15"
/* the sum of a few accumulators, stored, so that the work has a result (the checksum) */
#define STORE_Z(add) add " %%zmm1, %%zmm0, %%zmm0\n\t" add " %%zmm15, %%zmm14, %%zmm14\n\t" \
                     add " %%zmm14, %%zmm0, %%zmm0\n\t vmovdqu32 %%zmm0, (%[o])\n\t vzeroupper\n\t"
#define STORE_Y(add) add " %%ymm1, %%ymm0, %%ymm0\n\t" add " %%ymm11, %%ymm10, %%ymm10\n\t" \
                     add " %%ymm10, %%ymm0, %%ymm0\n\t vmovdqu %%ymm0, (%[o])\n\t vzeroupper\n\t"
#define LOAD_Z "vmovdqu32 (%[s]), %%zmm16\n\t vmovdqu32 64(%[s]), %%zmm17\n\t"
#define LOAD_Y "vmovdqu (%[s]), %%ymm12\n\t vmovdqu 32(%[s]), %%ymm13\n\t"
#define LOOP(body) "1:\n\t" body "dec %[n]\n\t jnz 1b\n\t"

/* out[] holds 16 int32 or fp32 lanes (8 used by the ymm kinds). The zmm loops carry a target
   attribute only so that gcc accepts zmm16-19 in their clobber lists; they run after the CPU check. */
#define AVX512 __attribute__((target("avx512f")))

AVX512 static void vnni_loop(long n, const void *seed, void *out) {
    __asm__ volatile(LOAD_Z REP16(ZERO_Z) LOOP(REP16(DPB_Z)) STORE_Z("vpaddd")
                     : [n] "+r"(n) : [s] "r"(seed), [o] "r"(out) : CLOBBER_Z, "memory", "cc");
}

AVX512 static void vpmaddwd_zmm_loop(long n, const void *seed, void *out) {
    __asm__ volatile(LOAD_Z REP16(ZERO_Z) LOOP(PAIRS16(PAIR_Z, 18, 19)) STORE_Z("vpaddd")
                     : [n] "+r"(n) : [s] "r"(seed), [o] "r"(out) : CLOBBER_Z, "memory", "cc");
}

AVX512 static void fma_loop(long n, const void *seed, void *out) {
    __asm__ volatile(LOAD_Z REP16(ZERO_Z) LOOP(REP16(FMA_Z)) STORE_Z("vaddps")
                     : [n] "+r"(n) : [s] "r"(seed), [o] "r"(out) : CLOBBER_Z, "memory", "cc");
}

static void vpmaddwd_ymm_loop(long n, const void *seed, void *out) {
    __asm__ volatile(LOAD_Y REP12(ZERO_Y) LOOP(PAIRS12(PAIR_Y, 14, 15)) STORE_Y("vpaddd")
                     : [n] "+r"(n) : [s] "r"(seed), [o] "r"(out) : CLOBBER_Y, "memory", "cc");
}

static void fma_ymm_loop(long n, const void *seed, void *out) {
    __asm__ volatile(LOAD_Y REP12(ZERO_Y) LOOP(REP12(FMA_Y)) STORE_Y("vaddps")
                     : [n] "+r"(n) : [s] "r"(seed), [o] "r"(out) : CLOBBER_Y, "memory", "cc");
}

static int has_vnni(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni"); }
static int has_avx512bw(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }
static int has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }
static int has_avx2(void) { return __builtin_cpu_supports("avx2"); }
static int has_fma(void) { return __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma"); }

typedef struct {
    const char *name;
    void (*loop)(long, const void *, void *);
    double ops_per_iter;    /* accumulators x ops per instruction */
    int is_float;
    int (*supported)(void);
    const char *feature;
} kind_t;

static const kind_t KINDS[] = {
    {"vnni", vnni_loop, 16 * 128.0, 0, has_vnni, "avx512vnni"},
    {"vpmaddwd-zmm", vpmaddwd_zmm_loop, 16 * 64.0, 0, has_avx512bw, "avx512bw"},
    {"fma", fma_loop, 16 * 32.0, 1, has_avx512f, "avx512f"},
    {"vpmaddwd-ymm", vpmaddwd_ymm_loop, 12 * 32.0, 0, has_avx2, "avx2"},
    {"fma-ymm", fma_ymm_loop, 12 * 16.0, 1, has_fma, "fma"},
};

typedef struct {
    const kind_t *kind;
    int cpu;
    long iters;
    pthread_barrier_t *start;
    double sink, t0, t1;
} job_t;

static double checksum(const kind_t *kind, const void *out) {
    double r = 0;
    for (int i = 0; i < 16; i++) r += kind->is_float ? ((const float *)out)[i] : ((const int32_t *)out)[i];
    return r;
}

static void *worker(void *p) {
    job_t *j = (job_t *)p;
    if (j->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(j->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    union { int32_t i[32]; float f[32]; } seed;
    union { int32_t i[16]; float f[16]; } out = {{0}};
    for (int i = 0; i < 32; i++) {
        if (j->kind->is_float) seed.f[i] = 1.0f - 1e-7f * i;
        else seed.i[i] = 0x01020304 + i;
    }
    pthread_barrier_wait(j->start);
    j->t0 = now();
    j->kind->loop(j->iters, &seed, &out);
    j->t1 = now();
    j->sink = checksum(j->kind, &out);
    return NULL;
}

static const kind_t *find_kind(const char *name) {
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (!strcmp(KINDS[i].name, name)) return &KINDS[i];
    return NULL;
}

int main(int argc, char **argv) {
    const kind_t *kind = argc >= 5 ? find_kind(argv[1]) : NULL;
    if (!kind) {
        fprintf(stderr, "usage: %s <vnni|vpmaddwd-zmm|fma|vpmaddwd-ymm|fma-ymm> <threads> <iters> <repeats> "
                        "[cpu,cpu,...]\n", argv[0]);
        return 2;
    }
    if (!kind->supported()) {
        fprintf(stderr, "%s: this CPU lacks %s\n", kind->name, kind->feature);
        return 3;
    }
    int threads = atoi(argv[2]);
    long iters = atol(argv[3]);
    int repeats = atoi(argv[4]);
    if (threads < 1 || threads > 64) return 2;
    int cpus[64];
    for (int t = 0; t < threads; t++) cpus[t] = t;
    if (argc > 5) {
        char *s = argv[5];
        for (int t = 0; t < threads && s && *s; t++) {
            cpus[t] = atoi(s);
            s = strchr(s, ',');
            if (s) s++;
        }
    }
    for (int r = 0; r < repeats; r++) {
        pthread_t th[64];
        job_t jobs[64];
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)threads);
        for (int t = 0; t < threads; t++) {
            jobs[t] = (job_t){kind, cpus[t], iters, &start, 0.0, 0.0, 0.0};
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
        pthread_barrier_destroy(&start);
        double sink = 0;
        for (int t = 0; t < threads; t++) sink += jobs[t].sink;
        printf("%.9f %.0f %g\n", t1 - t0, kind->ops_per_iter * (double)iters * threads, sink);
        fflush(stdout);
    }
    return 0;
}
