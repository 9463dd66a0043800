"""ERT-style probe kernels, written in TIR and built by TVM for the machine they measure.

Compute probes run ``accumulators(lanes)`` independent accumulator chains per thread of one instruction:
``vpdpbusd`` (AVX-512 VNNI zmm, or 256-bit AVX-VNNI), ``vpmaddwd`` + ``vpaddd`` (the int8 path of CPUs
without VNNI: AVX-512BW zmm, AVX2 ymm) or an fp32 FMA. The accumulators live in a small local buffer
that LLVM promotes to registers once the loops over it are unrolled. Memory probes are a STREAM
triad and copy over arrays far larger than the last-level cache, and a read of an L2-sized buffer
per thread, vectorized.

Each probe is a PrimFunc with a parallel loop over ``threads`` (1 = the single-thread ceiling).
"""
from __future__ import annotations

from tvm.script import tirx as T

#: Independent accumulator chains per thread: more than the probed instructions' latency x throughput
#: on current x86 cores, and few enough that the accumulators and the 2 other registers a probe needs
#: (the operands, or the operand and the vpmaddwd product) fit the register file. AVX2 has 16 ymm
#: registers: with 16 chains LLVM spilled 3 accumulators of the AVX2 int8 probe to the stack (and more
#: of the fp32 probe), which then measured 30% (int8) and 45% (fp32) below the 12-chain ones on Zen 4,
#: 27% and 50% below a C probe on Zen 3. zmm code has 32 registers and needs the 16: the zmm vpmaddwd
#: probe, whose chain runs through vpmaddwd and vpaddd, measured 16% below the C loop with 12 (Zen 4).
#: tests/test_roofline.py checks the generated loops for spills on every CPU class.
ACCUMULATORS_YMM, ACCUMULATORS_ZMM = 12, 16


def accumulators(lanes: int) -> int:
    """Accumulator chains of a probe on ``lanes`` 32-bit lanes (16 on zmm, 12 on ymm)."""
    return ACCUMULATORS_ZMM if lanes * 32 >= 512 else ACCUMULATORS_YMM


def int8_dot_probe(threads: int, lanes: int, intrinsic: str, pairs: bool = False):
    """``vpdpbusd``: acc[int32 x lanes] += 4 u8 x s8 products per lane (8 * lanes ops), or with
    ``pairs`` ``vpmaddwd`` + ``vpaddd``: += 2 int16 products per lane (4 * lanes ops)."""
    width = lanes * 2 if pairs else lanes * 4
    seed_dtype = "int16" if pairs else "int8"
    chains = accumulators(lanes)

    @T.prim_func
    def probe(seed: T.Buffer((128,), seed_dtype), out: T.Buffer((threads, lanes), "int32"), n: T.int64):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((chains * lanes,), "int32", scope="local")
            for i in T.unroll(chains):
                acc[T.ramp(i * lanes, 1, lanes)] = T.broadcast(T.Cast("int32", t) + i, lanes)
            for _ in range(n):
                for i in T.unroll(chains):
                    if pairs:  # a Python constant: the parser keeps one branch
                        # the accumulator is an operand too: loop-invariant operands would be hoisted
                        acc[T.ramp(i * lanes, 1, lanes)] = acc[T.ramp(i * lanes, 1, lanes)] + T.call_llvm_pure_intrin(
                            f"int32x{lanes}", intrinsic, T.reinterpret(f"int16x{width}", acc[T.ramp(i * lanes, 1, lanes)]),
                            seed[T.ramp(64, 1, width)])
                    else:
                        acc[T.ramp(i * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                            f"int32x{lanes}", intrinsic, acc[T.ramp(i * lanes, 1, lanes)],
                            T.reinterpret(f"uint8x{width}", seed[T.ramp(0, 1, width)]), seed[T.ramp(64, 1, width)])
            for lane in range(lanes):
                out[t, lane] = 0
                for i in range(chains):
                    out[t, lane] = out[t, lane] + acc[i * lanes + lane]
    return probe


def fma_probe(threads: int, lanes: int):
    """fp32 fused multiply-add on ``lanes``-wide vectors: 2 * lanes ops per instruction."""
    intrinsic = f"llvm.fma.v{lanes}f32"
    chains = accumulators(lanes)

    @T.prim_func
    def probe(seed: T.Buffer((128,), "float32"), out: T.Buffer((threads, lanes), "float32"), n: T.int64):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((chains * lanes,), "float32", scope="local")
            for i in T.unroll(chains):
                acc[T.ramp(i * lanes, 1, lanes)] = T.broadcast(T.Cast("float32", t + i), lanes)
            for _ in range(n):
                for i in T.unroll(chains):
                    acc[T.ramp(i * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                        f"float32x{lanes}", intrinsic, seed[T.ramp(0, 1, lanes)], seed[T.ramp(64, 1, lanes)],
                        acc[T.ramp(i * lanes, 1, lanes)])
            for lane in range(lanes):
                out[t, lane] = T.float32(0)
                for i in range(chains):
                    out[t, lane] = out[t, lane] + acc[i * lanes + lane]
    return probe


def triad_probe(threads: int, n: int, lanes: int = 16):
    """STREAM triad a = b + 3 c over float32 arrays of n elements (n divisible by threads * lanes)."""
    chunk = n // threads

    @T.prim_func
    def probe(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32"), c: T.Buffer((n,), "float32")):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        for t in T.parallel(threads):
            for i in range(chunk // lanes):
                for v in T.vectorized(lanes):
                    a[t * chunk + i * lanes + v] = b[t * chunk + i * lanes + v] + T.float32(3) * c[t * chunk + i * lanes + v]
    return probe


def copy_probe(threads: int, n: int, lanes: int = 16):
    """STREAM copy a = b over float32 arrays of n elements."""
    chunk = n // threads

    @T.prim_func
    def probe(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        for t in T.parallel(threads):
            for i in range(chunk // lanes):
                for v in T.vectorized(lanes):
                    a[t * chunk + i * lanes + v] = b[t * chunk + i * lanes + v]
    return probe


def read_probe(threads: int, per_thread: int, lanes: int = 16):
    """Each thread sums its own ``per_thread`` float32 elements ``n`` times (8 vector accumulators):
    the buffer fits the thread's L2 but not its L1, so every pass streams from L2."""
    step = 8 * lanes

    @T.prim_func
    def probe(buf: T.Buffer((threads * per_thread,), "float32"), out: T.Buffer((threads, lanes), "float32"),
              n: T.int64):
        T.func_attr({"global_symbol": "probe", "tirx.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((step,), "float32", scope="local")
            for i in T.unroll(8):
                acc[T.ramp(i * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            for _ in range(n):
                for j in range(per_thread // step):
                    for i in T.unroll(8):
                        acc[T.ramp(i * lanes, 1, lanes)] = acc[T.ramp(i * lanes, 1, lanes)] + \
                            buf[T.ramp(t * per_thread + j * step + i * lanes, 1, lanes)]
            for lane in range(lanes):
                out[t, lane] = T.float32(0)
                for i in range(8):
                    out[t, lane] = out[t, lane] + acc[i * lanes + lane]
    return probe
