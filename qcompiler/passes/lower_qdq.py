"""QDQ -> integer kernels: materialize the plans found by ``qdq_analysis``.

For every ``quantize`` whose input has an integer description, the quantize binding is replaced by
one fused integer kernel (int8/uint8 x int8 -> int32 accumulate, zero-point correction, bias in
int32, fixed-point requantize, clamp) built from ``qcompiler.kernels``. The float ops it replaces
become dead and are removed by DeadCodeElimination; whatever has no integer rule is left as it was
(an fp32 island between its dequantize and quantize).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .. import kernels
from ..errors import QCompilerError
from ..quant.fixed_point import FixedPoint, add_multipliers, multiplier_bits, quantize_multiplier
from .binding_util import emit_replacing, rewrite_relax_functions
from .qdq_analysis import analyze
from .qvalues import (Accumulator, Concat, ConstSource, LinearSum, OpSource, QActivation, QConstant, QParams,
                      VarSource)


NCHW_TO_NHWC, NHWC_TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


@dataclass(frozen=True)
class ChannelsLast:
    """A kernel result stored NHWC. Its binding keeps NCHW meaning through a permute_dims, which
    dead-code elimination drops when every consumer takes the NHWC tensor itself."""

    expr: relax.Expr


def _int_const(values, dtype: str) -> tvm.ir.GenericConst:
    return relax.const(np.ascontiguousarray(np.asarray(values).astype(dtype)), dtype)


def _shift_const(shift: np.ndarray) -> tvm.ir.GenericConst:
    """Per-channel requantize shifts in the form the kernels take (``kernels.shift_operand``)."""
    operand = kernels.shift_operand(shift)
    return _int_const(operand, str(operand.dtype))


def _signed_weight(w: QConstant) -> tuple[np.ndarray, np.ndarray]:
    """Weights as int8 (VNNI multiplies u8 x s8): uint8 weights shift by -128 with their zero point."""
    q, zp = w.q.astype(np.int64), w.zero_point
    if w.q.dtype == np.uint8:
        q, zp = q - 128, zp - 128
    elif w.q.dtype != np.int8:
        raise QCompilerError(f"weights of dtype {w.q.dtype} are not supported by integer kernels; quantize weights "
                             "to int8 or uint8")
    return q.astype(np.int8), zp


def _clamp_bounds(lo: float, hi: float, out: QParams) -> tuple[int, int]:
    """Real clamp bounds (relu/clip folded into the accumulator) as quantized bounds of the output."""
    q_lo, q_hi = out.qmin, out.qmax
    if not math.isinf(lo):
        q_lo = max(q_lo, out.zero_point + int(np.round(lo / out.scale)))
    if not math.isinf(hi):
        q_hi = min(q_hi, out.zero_point + int(np.round(hi / out.scale)))
    return q_lo, max(q_lo, q_hi)


def _centered_range(params: QParams) -> tuple[int, int]:
    """The values q - zero_point an integer tensor with these parameters can hold."""
    return params.qmin - params.zero_point, params.qmax - params.zero_point


def _requantizer(d: Accumulator, scale: np.ndarray, out: QParams, lo: int, hi: int) -> FixedPoint:
    """The fixed-point requantize of ``d`` to ``out``, exactly rounded for every accumulator its kernel makes.

    Dot products: int32 accumulators and multipliers (vpmuldq); the real scale is s_x * s_w / s_out.
    mul: acc = (a - za)(b - zb), multiplied in int64, so the multiplier may widen until it is exact.
    avg_pool2d: acc = the window sum of x - zx; the real scale is s_x / s_out divided exactly by the
    window size (so averaging a constant window requantizes like the value itself).
    """
    out_range, what = (lo - out.zero_point, hi - out.zero_point), f"{d.kind} requantize"
    if d.kind == "mul":
        products = [x * y for x in _centered_range(d.operands[0].params) for y in _centered_range(d.operands[1].params)]
        acc = (min(products), max(products))
        return quantize_multiplier(scale / out.scale, what, out_range=out_range, acc_range=acc,
                                   max_bits=multiplier_bits(acc))
    if d.kind == "avg_pool2d":
        (x,) = d.operands
        count = int(np.prod(d.attrs["pool_size"]))
        acc = tuple(count * v for v in _centered_range(x.params))
        return quantize_multiplier(x.params.scale / out.scale, what, out_range=out_range, acc_range=acc,
                                   divisor=count, max_bits=multiplier_bits(acc))
    if d.kind in ("dense", "conv2d"):
        return quantize_multiplier(scale / out.scale, what, out_range=out_range, acc_range=_dot_range(d))
    return quantize_multiplier(scale / out.scale, what, out_range=out_range)


def _dot_range(d: Accumulator) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, bounds of a dense/conv kernel's int32 accumulator: every variant sums
    x' * (w - wzp) over the reduction with |x'| <= 255 (the activation as stored, or shifted to uint8)."""
    w = d.operands[1]
    axes = (0,) if d.kind == "dense" else (1, 2, 3)
    bound = np.minimum(255 * np.abs(w.q.astype(np.int64) - w.zero_point).sum(axis=axes), 2 ** 31 - 1)
    return -bound, bound


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plans: dict, weight_layout: str = "plain"):
        super().__init__(mod)
        self.plans = plans
        self.memo: dict = {}
        self.weight_layout = weight_layout
        self.channels_last: dict = {}  # original var -> its NHWC twin (for kernels that take NHWC)

    # ------------------------------------------------------------------ bindings
    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None:
            return super().visit_var_binding_(binding)
        description, call = plan
        if call is None:  # used as a float: integer kernel with an fp32 epilogue
            value = self._accumulator(description, None, call, float_output=True)
        elif call.op.name == "relax.astype":
            value = self._accumulator(description, None, call)
        else:
            out = QParams(float(np.float32(call.args[1].value.numpy().reshape(()))),
                          int(call.args[2].value.numpy().reshape(())), str(call.attrs.out_dtype))
            value = self._quantized(description, out, call)
        if isinstance(value, ChannelsLast):
            self.channels_last[binding.var] = value.expr
            value = relax.op.permute_dims(value.expr, NHWC_TO_NCHW)
        emit_replacing(self, binding.var, value)

    # ------------------------------------------------------------------ integer tensors
    def _int_tensor(self, source, layout: str = "NCHW") -> relax.Expr:
        """The integer tensor of ``source``; ``layout`` "NHWC" asks a 4-D activation channels-last."""
        if isinstance(source, tuple):
            return relax.Tuple([self._int_tensor(s, layout) for s in source])
        key = (id(source), layout)
        if key in self.memo:
            return self.memo[key][1]
        undone = self._undone_transpose(source, layout)
        if undone is not None:
            expr = undone
        elif layout == "NHWC":
            expr = self._channels_last_tensor(source)
        elif isinstance(source, VarSource):
            expr = self.visit_expr(source.var)
        elif isinstance(source, ConstSource):
            expr = relax.const(source.array)
        else:
            call = source.call
            args = [self._int_tensor(source.input)] + [self.visit_expr(a) for a in call.args[1:]]
            expr = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
        self.memo[key] = (source, expr)  # keep the source alive so id() stays unique
        return expr

    def _undone_transpose(self, source, layout: str) -> relax.Expr | None:
        """A transpose that meets its inverse cancels: the model's own NHWC->NCHW permute asked for
        as NHWC is its input; an NCHW->NHWC permute of a channels-last result is that result."""
        if not (isinstance(source, OpSource) and source.call.op.name == "relax.permute_dims"
                and source.call.attrs.axes is not None):
            return None
        axes = [int(a) for a in source.call.attrs.axes]
        if layout == "NHWC" and axes == NHWC_TO_NCHW:
            return self._int_tensor(source.input, "NCHW")
        if layout == "NCHW" and axes == NCHW_TO_NHWC and self.has_channels_last(source.input):
            return self._int_tensor(source.input, "NHWC")
        return None

    def _channels_last_tensor(self, source) -> relax.Expr:
        if isinstance(source, VarSource) and source.var in self.channels_last:
            return self.channels_last[source.var]
        if isinstance(source, OpSource) and self.has_channels_last(source):
            name, attrs = source.call.op.name, source.call.attrs
            if name == "relax.nn.max_pool2d":
                return self.builder_.emit(relax.op.nn.max_pool2d(
                    self._int_tensor(source.input, "NHWC"), pool_size=attrs.pool_size, strides=attrs.strides,
                    padding=attrs.padding, dilation=attrs.dilation, ceil_mode=attrs.ceil_mode,
                    count_include_pad=attrs.count_include_pad, layout="NHWC", out_layout="NHWC"))
            if name == "relax.concat":
                return self.builder_.emit(relax.op.concat(self._int_tensor(source.input, "NHWC"), axis=3))
        return self.builder_.emit(relax.op.permute_dims(self._int_tensor(source), NCHW_TO_NHWC))

    def has_channels_last(self, source) -> bool:
        """Whether ``source`` exists channels-last without a transpose (so NHWC consumers are cheap)."""
        if isinstance(source, tuple):
            return all(self.has_channels_last(s) for s in source)
        if isinstance(source, VarSource):
            return source.var in self.channels_last
        if isinstance(source, OpSource):
            name = source.call.op.name
            if name == "relax.permute_dims" and source.call.attrs.axes is not None \
                    and [int(a) for a in source.call.attrs.axes] == NHWC_TO_NCHW:
                return True  # the model's own NHWC -> NCHW transpose: its input is the NHWC tensor
            if name == "relax.nn.max_pool2d" and source.call.attrs.layout == "NCHW":
                return self.has_channels_last(source.input)
            if name == "relax.concat" and int(source.call.attrs.axis) in (1, -3):
                return self.has_channels_last(source.input)
        return False

    def _nchw(self, value) -> relax.Expr:
        if isinstance(value, ChannelsLast):
            return self.builder_.emit(relax.op.permute_dims(value.expr, NHWC_TO_NCHW))
        return value

    def _as_uint8(self, x: relax.Expr, zero_point: int) -> tuple[relax.Expr, int]:
        """VNNI multiplies u8 activations: an int8 tensor (a graph input, or one the uint8
        legalization could not move) is shifted by +128, and so is its zero point."""
        if str(x.ty.dtype) == "uint8":
            return x, zero_point
        shifted = relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16"))
        return self.builder_.emit(relax.op.astype(shifted, "uint8")), zero_point + 128

    def _reshape(self, expr: relax.Expr, shape) -> relax.Expr:
        if tuple(int(d) for d in expr.ty.shape.values) == tuple(shape):
            return expr
        return self.builder_.emit(relax.op.reshape(expr, list(shape)))

    def _kernel(self, fn, kind: str, *args, layout: str = "plain", **kwargs) -> relax.Expr:
        """Emit kernel ``fn``; ``kind`` and ``layout`` are the attributes the schedules dispatch on
        (and a grouped conv's group count, which bounds its register tile)."""
        attrs = {kernels.KERNEL_ATTR: kind, kernels.LAYOUT_ATTR: layout}
        if kwargs.get("groups", 1) > 1:
            attrs[kernels.GROUPS_ATTR] = kwargs["groups"]
        return self.builder_.emit(self.builder_.call_te(
            fn, *args, primfunc_name_hint=f"q{kind}", primfunc_attrs=attrs, **kwargs))

    def _grouped_micro_kernel(self, wq: np.ndarray, groups: int) -> bool:
        """A grouped conv runs on the micro-kernel when every group has whole ``lanes``-channel output
        blocks and a whole number of ``k_group`` input-channel groups (no padding inside a group);
        others (e.g. 8-channel groups on zmm) stay on the plain template."""
        from schedules.x86_vnni import DOT_KERNELS
        kernel = DOT_KERNELS[self.weight_layout]
        return (wq.shape[0] // groups) % kernel.lanes == 0 and wq.shape[1] % kernel.k_group == 0

    def _packed_weight(self, wq: np.ndarray, kind: str, rows: int = 0) -> tuple:
        """(kernel function, packed weight constant) of the target's micro-kernel: int8 blocks of
        16 x 4 for vpdpbusd, int16 blocks of lanes x 2 for vpmaddwd (``pairs8x2`` / ``pairs16x2``;
        a dense kernel's are packed per register tile of its ``rows`` x N output)."""
        from schedules.x86_vnni import DOT_KERNELS, dense_tile, padded_rows  # packing / template contract
        kernel = DOT_KERNELS[self.weight_layout]
        m_pad = padded_rows(rows) if kind == "dense" else 0
        if self.weight_layout.startswith("pairs"):
            if kind == "dense":  # both operands packed per register tile: the template's default tile
                mr, nr = dense_tile(m_pad, wq.shape[1], wq.shape[0], kernel)
                return (functools.partial(kernels.qdense_packed_pairs, rows=mr, m_pad=m_pad),
                        _int_const(kernels.pack_dense_weight_pairs(wq, kernel.lanes, nr), "int16"))
            return kernels.qconv2d_packed_pairs, _int_const(kernels.pack_conv_weight_pairs(wq, kernel.lanes), "int16")
        if kind == "dense":
            return functools.partial(kernels.qdense_packed, m_pad=m_pad), _int_const(kernels.pack_dense_weight(wq), "int8")
        return kernels.qconv2d_packed, _int_const(kernels.pack_conv_weight(wq), "int8")

    # ------------------------------------------------------------------ quantize(description)
    def _quantized(self, d, out: QParams, call: relax.Call) -> relax.Expr:
        if isinstance(d, Accumulator):
            return self._accumulator(d, out, call)
        if isinstance(d, QActivation):
            d = LinearSum((d,), (1.0,))
        if isinstance(d, LinearSum):
            return self._linear_sum(d, out, call)
        if isinstance(d, Concat):
            parts = [self._nchw(self._quantized(t, out, call)) for t in d.terms]
            return relax.op.concat(parts, axis=int(d.call.attrs.axis))
        raise TypeError(d)

    def _elementwise_layout(self, terms) -> str:
        """Elementwise kernels follow their inputs: NHWC if every input is 4-D, of one shape, and
        already channels-last; else NCHW."""
        shapes = {tuple(int(v) for v in self._int_tensor(t.source).ty.shape.values) for t in terms}
        if len(shapes) == 1 and len(next(iter(shapes))) == 4 and all(self.has_channels_last(t.source) for t in terms):
            return "NHWC"
        return "NCHW"

    def _linear_sum(self, d: LinearSum, out: QParams, call: relax.Call):
        lo, hi = _clamp_bounds(d.lo, d.hi, out)
        out_range = (lo - out.zero_point, hi - out.zero_point)
        layout = self._elementwise_layout(d.terms)
        wrap = ChannelsLast if layout == "NHWC" else (lambda e: e)
        if len(d.terms) == 1:
            (term,) = d.terms
            x = self._int_tensor(term.source, layout)
            if term.params == out and lo <= out.qmin and hi >= out.qmax:
                return wrap(x)
            acc = _centered_range(term.params)  # exact: x - zx rescaled by s_x / s_out
            fp = quantize_multiplier(term.params.scale / out.scale, "requantize", out_range=out_range, acc_range=acc,
                                     max_bits=multiplier_bits(acc))
            return wrap(self._kernel(kernels.requantize, "requantize", x, input_zero_point=term.params.zero_point,
                                     multiplier=int(fp.multiplier[0]), offset=int(fp.offset()[0]),
                                     shift=int(fp.shift[0]), zero_point=out.zero_point, lo=lo, hi=hi,
                                     out_dtype=out.dtype))
        a, b = d.terms
        fx = add_multipliers(a.params.scale / out.scale, b.params.scale / out.scale * d.coefficients[1],
                             _centered_range(a.params), _centered_range(b.params), out_range, "add")
        out_shape = tuple(int(v) for v in call.args[0].ty.shape.values)
        if layout == "NHWC":
            out_shape = tuple(out_shape[i] for i in NCHW_TO_NHWC)
        return wrap(self._kernel(kernels.qadd, "add", self._int_tensor(a.source, layout),
                                 self._int_tensor(b.source, layout), out_shape=out_shape,
                                 a_zero_point=a.params.zero_point, b_zero_point=b.params.zero_point,
                                 a_multiplier=fx.a_multiplier, b_multiplier=fx.b_multiplier, shift=fx.shift,
                                 offset=fx.offset, zero_point=out.zero_point, lo=lo, hi=hi, out_dtype=out.dtype))

    def _accumulator(self, d: Accumulator, out: QParams | None, call: relax.Call | None,
                     float_output: bool = False) -> relax.Expr:
        """One fused kernel: integer accumulate + zero-point terms + bias + epilogue.

        Epilogue: requantize + clamp to ``out``; with ``out`` None an exact int32 accumulator
        (MatMulInteger/ConvInteger), or with ``float_output`` an fp32 value (scale, float bias, clamp).
        """
        out_shape = d.attrs["out_shape"]
        channels = out_shape[d.channel_axis]
        scale = np.broadcast_to(d.scale, (channels,)).astype(np.float64)
        bias, fraction = np.zeros(channels, np.int64), None
        if d.bias is not None and not float_output:
            exact_bias = d.bias / scale
            bias = np.round(exact_bias).astype(np.int64)
            fraction = exact_bias - bias  # kept: see FixedPoint.offset
        fp = None
        if float_output:
            zero_point, lo, hi, out_dtype = 0, d.lo, d.hi, "float32"
        elif out is None:
            lo = hi = zero_point = 0
            out_dtype = "int32"
        else:
            lo, hi = _clamp_bounds(d.lo, d.hi, out)
            zero_point, out_dtype = out.zero_point, out.dtype
            fp = _requantizer(d, scale, out, lo, hi)
        common = dict(zero_point=zero_point, lo=lo, hi=hi, out_dtype=out_dtype)

        if d.kind in ("dense", "conv2d"):
            x, w = d.operands
            wq, wzp = _signed_weight(w)
            if d.kind == "dense":
                wzp = wzp[0, :]
                reduce_axes, k_size = (0,), wq.shape[0]
            else:
                wzp = wzp[:, 0, 0, 0]
                reduce_axes, k_size = (1, 2, 3), int(np.prod(wq.shape[1:]))
            # micro-kernels with packed weights (VNNI, or vpmaddwd without it): dense, conv2d (grouped
            # ones when each group has whole channel blocks), depthwise (convs without weight zero
            # points); the conv ones work channels-last, NHWC in and out
            micro = self.weight_layout != "plain" and not (d.kind == "conv2d" and np.any(wzp != 0))
            depthwise = d.kind == "conv2d" and wq.shape[1] == 1 and d.attrs["groups"] == wq.shape[0] > 1
            packed = micro and (d.kind == "dense" or d.attrs["groups"] == 1
                                or (not depthwise and self._grouped_micro_kernel(wq, d.attrs["groups"])))
            channels_last = micro and d.kind == "conv2d" and (packed or depthwise)
            xi, za = self._int_tensor(x.source, "NHWC" if channels_last else "NCHW"), x.params.zero_point
            if packed:
                xi, za = self._as_uint8(xi, za)
            colsum = wq.astype(np.int64).sum(axis=reduce_axes)
            acc_offset = bias - za * colsum + k_size * za * wzp
            extra_args = {"weight_zero_point": _int_const(wzp, "int32")} if np.any(wzp != 0) else {}
            if float_output:
                params = (None, _int_const(acc_offset, "int32"), None)
                extra_args["out_scale"] = relax.const(scale.astype(np.float32))
                extra_args["out_bias"] = relax.const((np.zeros(channels) if d.bias is None else d.bias).astype(np.float32))
            elif fp is None:
                params = (None, _int_const(acc_offset, "int32"), None)
            else:
                params = (_int_const(fp.multiplier, "int32"), _int_const(fp.offset(acc_offset, fraction), "int64"),
                          _shift_const(fp.shift))
            if d.kind == "dense":
                x2 = self._reshape(xi, (int(np.prod(out_shape[:-1])), wq.shape[0]))
                if packed:
                    fn, wp = self._packed_weight(wq, "dense", int(x2.ty.shape.values[0]))
                    y = self._kernel(fn, "dense", x2, wp, *params, **extra_args,
                                     layout=self.weight_layout, n_out=wq.shape[1], **common)
                else:
                    y = self._kernel(kernels.qdense, "dense", x2, _int_const(wq, "int8"), *params, **extra_args,
                                     **common)
                return self._reshape(y, out_shape)
            a = d.attrs
            geometry = dict(strides=a["strides"], padding=a["padding"], dilation=a["dilation"], pad_value=za)
            if channels_last:  # a float result leaves the integer region: written NCHW by the kernel
                out_layout = "NCHW" if float_output else "NHWC"
                if depthwise:
                    y = self._kernel(kernels.qdepthwise_conv2d_nhwc, "conv2d", xi,
                                     _int_const(np.ascontiguousarray(wq[:, 0].transpose(1, 2, 0)), "int8"), *params,
                                     **extra_args, layout="depthwise_nhwc", out_layout=out_layout, **geometry,
                                     **common)
                else:
                    fn, wp = self._packed_weight(wq, "conv2d")
                    y = self._kernel(fn, "conv2d", xi, wp, *params, **extra_args,
                                     layout=self.weight_layout, out_channels=wq.shape[0],
                                     out_layout=out_layout, groups=a["groups"], **geometry, **common)
                return y if float_output else ChannelsLast(y)
            return self._kernel(kernels.qconv2d, "conv2d", xi, _int_const(wq, "int8"), *params, **extra_args,
                                groups=a["groups"], **geometry, **common)

        if fp is None:
            raise TypeError(d.kind)
        offset = int(fp.offset(bias[:1], None if fraction is None else fraction[:1])[0])
        if d.kind == "batch_matmul":
            a, b = d.operands
            ai, bi = self._int_tensor(a.source), self._int_tensor(b.source)
            a_shape = [int(v) for v in ai.ty.shape.values]
            b_shape = [int(v) for v in bi.ty.shape.values]
            batch = int(np.prod(a_shape[:-2]))
            a3, b3 = self._reshape(ai, (batch, *a_shape[-2:])), self._reshape(bi, (batch, *b_shape[-2:]))
            za = a.params.zero_point
            fn, layout, extra = kernels.qbatch_matmul, "plain", {}
            if self.weight_layout == "packed16x4":
                (a3, za), fn, layout = self._as_uint8(a3, za), kernels.qbatch_matmul_packed, self.weight_layout
            elif self.weight_layout.startswith("pairs"):
                from schedules.x86_vnni import DOT_KERNELS
                fn, layout = kernels.qbatch_matmul_pairs, self.weight_layout
                extra = {"lanes": DOT_KERNELS[layout].lanes}
            y = self._kernel(fn, "batch_matmul", a3, b3, a_zero_point=za, b_zero_point=b.params.zero_point,
                             multiplier=int(fp.multiplier[0]), offset=offset, shift=int(fp.shift[0]), layout=layout,
                             **extra, **common)
            return self._reshape(y, out_shape)
        if d.kind == "mul":
            a, b = d.operands
            return self._kernel(kernels.qmul, "mul", self._int_tensor(a.source), self._int_tensor(b.source),
                                out_shape=tuple(out_shape), a_zero_point=a.params.zero_point,
                                b_zero_point=b.params.zero_point, multiplier=int(fp.multiplier[0]), offset=offset,
                                shift=int(fp.shift[0]), **common)
        if d.kind == "avg_pool2d":
            (x,) = d.operands
            layout = "NHWC" if self.has_channels_last(x.source) else "NCHW"
            y = self._kernel(kernels.qavg_pool2d, "avg_pool2d", self._int_tensor(x.source, layout),
                             pool_size=d.attrs["pool_size"], strides=d.attrs["strides"], padding=d.attrs["padding"],
                             input_zero_point=x.params.zero_point, multiplier=int(fp.multiplier[0]), offset=offset,
                             shift=int(fp.shift[0]), data_layout=layout, layout="nhwc" if layout == "NHWC" else "plain",
                             **common)
            return ChannelsLast(y) if layout == "NHWC" else y
        raise TypeError(d.kind)


@tvm.transform.module_pass(opt_level=0, name="qcompiler.LowerQDQToInteger")
def lower_qdq_to_integer(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite QDQ patterns of every Relax function into integer kernels (see module docstring)."""
    plans = {}
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            plans.update(analyze(func).plans)
    if not plans:
        return mod
    target = tvm.target.Target.current(allow_none=True)
    import schedules
    layout = schedules.weight_layout(target) if target is not None else "plain"
    return relax.transform.DeadCodeElimination()(rewrite_relax_functions(mod, _Lowerer(mod, plans, layout)))
