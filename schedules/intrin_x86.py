"""Our own x86 tensor intrinsics (TVM 0.27's shipped VNNI intrinsic fails LLVM 22 codegen).

``vpdpbusd`` 16x4: C[16] (int32) += sum_k A[k] (u8, broadcast) * B[16, k] (s8), k = 0..3, in one
instruction per 16 output lanes. LLVM 22 types the operands as <64 x i8>, hence the reinterpret
of the broadcast 4 bytes of A as uint8x64. The impl binds no named temporaries: in 0.27 every
let-bound temporary becomes a workspace allocation per parallel task (measured: ~1,216 vs
~1,800 GOP/s).
"""
from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

VNNI_16x4 = "qcompiler_vnni_u8s8s32_16x4"
AVXVNNI_8x4 = "qcompiler_avxvnni_u8s8s32_8x4"


def _dot_intrinsic(lanes: int, llvm_name: str):
    vec_i32, vec_u8, vec_s8 = f"int32x{lanes}", f"uint8x{lanes * 4}", f"int8x{lanes * 4}"

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                vec_i32, llvm_name, C.vload([0], dtype=vec_i32),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                              dtype=vec_u8),
                B.vload([0, 0], dtype=vec_s8))

    return desc, impl


def register() -> None:
    """Register the intrinsics (idempotent: ``override=True``)."""
    s_tir.TensorIntrin.register(VNNI_16x4, *_dot_intrinsic(16, "llvm.x86.avx512.vpdpbusd.512"), override=True)
    s_tir.TensorIntrin.register(AVXVNNI_8x4, *_dot_intrinsic(8, "llvm.x86.avx512.vpdpbusd.256"), override=True)


register()


PMADDWD_16x2x2 = "qcompiler_pmaddwd_u8s8s32_16x2x2"


def _pairs_intrinsic():
    """vpmaddwd (AVX-512BW) 16x4 block without VNNI: C[16, 2] += pairs of u8 x s8 products.

    vpmaddwd multiplies int16 lanes and adds adjacent pairs into int32, so one instruction covers 8
    output lanes x 4 reduction steps as (k0, k1) and (k2, k3) partial sums: C[n, p] accumulates the
    pair p = 0 or 1 and the two are added once, in the epilogue. int16 products of u8 x s8 cannot
    overflow and their pair sums fit int32, unlike pmaddubsw's saturating int16 sums.
    """
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16, 2), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16, 0:2])
            for n in T.serial(0, 16):
                for p in T.serial(0, 2):
                    for q in T.serial(0, 2):
                        with T.sblock("update"):
                            vn, vp, vq = T.axis.remap("SSR", [n, p, q])
                            C[vn, vp] = C[vn, vp] + T.cast(A[vp * 2 + vq], "int32") * T.cast(B[vn, vp * 2 + vq], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16, 2), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16, 0:2])
            C[0, T.ramp(T.int32(0), 1, 16)] = C.vload([0, 0], dtype="int32x16") + T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.pmaddw.d.512", T.Cast("int16x32", B.vload([0, 0], dtype="int8x32")),
                T.Cast("int16x32", T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                                                 dtype="uint8x32")))
            C[8, T.ramp(T.int32(0), 1, 16)] = C.vload([8, 0], dtype="int32x16") + T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.pmaddw.d.512", T.Cast("int16x32", B.vload([8, 0], dtype="int8x32")),
                T.Cast("int16x32", T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                                                 dtype="uint8x32")))

    return desc, impl


s_tir.TensorIntrin.register(PMADDWD_16x2x2, *_pairs_intrinsic(), override=True)
