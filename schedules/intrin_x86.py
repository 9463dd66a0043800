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


#: vpmaddwd on int16 operands, exact (CPUs without VNNI): name -> (lanes, LLVM intrinsic)
PMADDWD_8x2 = "qcompiler_pmaddwd_s16s16s32_8x2"     # AVX2 ymm
PMADDWD_16x2 = "qcompiler_pmaddwd_s16s16s32_16x2"   # AVX-512BW zmm
PMADDWD = {PMADDWD_8x2: (8, "llvm.x86.avx2.pmadd.wd"), PMADDWD_16x2: (16, "llvm.x86.avx512.pmaddw.d.512")}


def _pairs_intrinsic(lanes: int, llvm_name: str):
    """C[lanes] (int32) += A[0]*B[:, 0] + A[1]*B[:, 1], A (int16, broadcast) and B (int16) operands.

    ``vpmaddwd`` multiplies int16 lanes exactly and adds adjacent pairs into int32: for 8-bit values
    widened to int16 a pair sum is at most 2 * 255 * 128 in magnitude, unlike ``vpmaddubsw``'s
    saturating int16 pair sums. The two int16 of A are broadcast as one int32.
    Like the VNNI impl, it binds no temporaries (each would be a workspace allocation per task).
    """
    vec_i32, vec_i16 = f"int32x{lanes}", f"int16x{lanes * 2}"

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((lanes, 2), "int16", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((lanes, 2), "int16", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=vec_i32) + T.call_llvm_pure_intrin(
                vec_i32, llvm_name, B.vload([0, 0], dtype=vec_i16),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), lanes), dtype=vec_i16))

    return desc, impl


for _name, (_lanes, _llvm) in PMADDWD.items():
    s_tir.TensorIntrin.register(_name, *_pairs_intrinsic(_lanes, _llvm), override=True)
