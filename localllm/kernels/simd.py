"""Explicit vector operations for Numba kernels, written as LLVM IR through `numba.extending.intrinsic`.

Plain Numba loops over 32 interleaved rows kept widening bytes to 64-bit lanes and spilling the
accumulators (~7 G weights/s on 2 cores); the same work on LLVM vector types compiles to packed
zero-extends, conversions and FMAs with the accumulators in registers (~1.6x faster under load).
LLVM lowers the vector types for whatever CPU it targets (SSE, AVX2, AVX-512), so these stay portable.
"""
from __future__ import annotations

import os
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .entry import lean_caches

LANES = 32            # one call handles the 32 interleaved rows of a row group
_I8V = ir.VectorType(ir.IntType(8), LANES)
_F32V = ir.VectorType(ir.FloatType(), LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8F = ir.VectorType(ir.FloatType(), 8)
_FAST = ("fast",)


def _splat(builder, value):
    v = builder.insert_element(ir.Constant(_F32V, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_F32V, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _pointers(context, builder, signature, args):
    q = context.make_array(signature.args[0])(context, builder, args[0])
    acc = context.make_array(signature.args[2])(context, builder, args[2])
    qptr = builder.bitcast(builder.gep(q.data, [args[1]]), _I8V.as_pointer())
    return qptr, builder.bitcast(acc.data, _F32V.as_pointer())


@intrinsic
def fma_nibbles32(typingctx, q, at, acc, x0, x1):
    """acc[0:32] += (q.flat[at:at+32] & 15) * x0 + (q.flat[at:at+32] >> 4) * x1; q uint8, acc float32."""
    sig = types.void(q, at, acc, x0, x1)

    def codegen(context, builder, signature, args):
        qptr, aptr = _pointers(context, builder, signature, args)
        b = builder.load(qptr, align=1)
        lo = builder.uitofp(builder.and_(b, ir.Constant(_I8V, [15] * LANES)), _F32V)
        hi = builder.uitofp(builder.lshr(b, ir.Constant(_I8V, [4] * LANES)), _F32V)
        a = builder.load(aptr, align=4)
        a = builder.fadd(a, builder.fmul(lo, _splat(builder, args[3]), flags=_FAST), flags=_FAST)
        a = builder.fadd(a, builder.fmul(hi, _splat(builder, args[4]), flags=_FAST), flags=_FAST)
        builder.store(a, aptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fma_int8x32(typingctx, q, at, acc, x):
    """acc[0:32] += int8(q.flat[at:at+32]) * x; q uint8 holding int8 codes, acc float32."""
    sig = types.void(q, at, acc, x)

    def codegen(context, builder, signature, args):
        qptr, aptr = _pointers(context, builder, signature, args)
        w = builder.sitofp(builder.load(qptr, align=1), _F32V)
        a = builder.load(aptr, align=4)
        a = builder.fadd(a, builder.fmul(w, _splat(builder, args[3]), flags=_FAST), flags=_FAST)
        builder.store(a, aptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (a bitcast: free, and vectorises in loops)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(fastmath=True, inline="always")
def exp_f32(x):
    """e**x in float32 (relative error under 2e-7 on [-87, 88]; clamped there, so never inf, NaN or a
    denormal). Without SVML, Numba calls libm's expf once per element; this plain arithmetic lets a
    loop over it vectorise (silu/gelu over 4864 values: ~10x faster). Cephes' expf: x = k ln2 + r,
    |r| <= ln2/2, e**r by a degree-7 polynomial, 2**k built in the exponent bits."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


def _at(context, builder, ty, arr, at):
    """Pointer to element `at` of a C-contiguous array, counted over its flat data."""
    return builder.gep(context.make_array(ty)(context, builder, arr).data, [_i64(builder, at)])


def _i64(builder, v):
    return builder.sext(v, _I64) if v.type != _I64 else v


def _host_has_f16c() -> bool:
    """Whether the CPU converts float16 vectors in hardware (x86 F16C; every 64-bit ARM)."""
    if os.environ.get("LOCALLLM_F16C", "1") == "0":
        return False
    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("f16c"))
    except Exception:
        return False


# Widen float16 with the CPU's conversion instruction (x86 F16C: vcvtph2ps, 8 halves in one; ARM's fcvtl)
# where it has one, else with integer operations any vector unit has. On a Zen 3 at 4096 keys the integer
# form made the attention kernels compute bound, 2-3x slower than over a float32 cache; vcvtph2ps ran
# them faster than over float32. LOCALLLM_F16C=0 forces the integer form (part of the kernels' cache key).
F16C = _host_has_f16c()


def _v8(builder, ptr):
    """Eight float32 from ptr: float32 data, or float16 bits (i16) widened exactly (see half_to_f32)."""
    if ptr.type.pointee == ir.IntType(16):
        raw = builder.load(builder.bitcast(ptr, ir.VectorType(ir.IntType(16), 8).as_pointer()), align=2)
        if F16C:
            return builder.fpext(builder.bitcast(raw, ir.VectorType(ir.HalfType(), 8)), _V8F)
        h = builder.zext(raw, ir.VectorType(_I32, 8))
        bits = builder.or_(builder.shl(builder.and_(h, _i32x8(0x8000)), _i32x8(16)),
                           builder.shl(builder.and_(h, _i32x8(0x7FFF)), _i32x8(13)))
        return builder.fmul(builder.bitcast(bits, _V8F), ir.Constant(_V8F, [2.0 ** 112] * 8))
    return builder.load(builder.bitcast(ptr, _V8F.as_pointer()), align=4)


def _i32x8(n):
    return ir.Constant(ir.VectorType(_I32, 8), [n] * 8)


def _mix(builder, a, b, idx):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 8), idx))


def _fma(builder, acc, a, b):
    return builder.fadd(builder.load(acc), builder.fmul(a, b, flags=_FAST), flags=_FAST)


def _bcast8(builder, ptr):
    """The float32 at ptr in all eight lanes."""
    v = builder.insert_element(ir.Constant(_V8F, ir.Undefined), builder.load(ptr), ir.Constant(_I32, 0))
    return _mix(builder, v, ir.Constant(_V8F, ir.Undefined), [0] * 8)


@intrinsic
def dots8(typingctx, q, qat, k, kat, stride, n, out, oat):
    """out.flat[oat + i] = sum_{d < n} q.flat[qat + d] * k.flat[kat + i * stride + d] for i = 0..7: eight
    keys' dot products with one query at once, their eight vector sums reduced together at the end (a
    reduction per dot product cost as much as the products for head size 64). n a multiple of 8;
    C-contiguous arrays, float32 (k: float32 or float16 bits, uint16)."""
    sig = types.void(q, qat, k, kat, stride, n, out, oat)

    def codegen(context, builder, signature, args):
        ty = signature.args
        qp, kp = _at(context, builder, ty[0], args[0], args[1]), _at(context, builder, ty[2], args[2], args[3])
        stride, n = _i64(builder, args[4]), _i64(builder, args[5])
        rows = [builder.gep(kp, [builder.mul(stride, ir.Constant(_I64, i))]) for i in range(8)]
        accs = [cgutils.alloca_once(builder, _V8F) for _ in range(8)]     # LLVM keeps them in registers
        for a in accs:
            builder.store(ir.Constant(_V8F, [0.0] * 8), a)
        with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), n, ir.Constant(_I64, 8)) as (d, _):
            qv = _v8(builder, builder.gep(qp, [d]))
            for i in range(8):
                builder.store(_fma(builder, accs[i], qv, _v8(builder, builder.gep(rows[i], [d]))), accs[i])
        r = _transpose_add8(builder, [builder.load(x) for x in accs])     # lane i ends with key i's sum
        op = _at(context, builder, ty[6], args[6], args[7])
        builder.store(r, builder.bitcast(op, _V8F.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def axpy64(typingctx, w, wat, v, vat, stride, n, acc, aat):
    """acc.flat[aat + d] += sum_{j < n} w.flat[wat + j] * v.flat[vat + j * stride + d] for d = 0..63: n
    value rows' first 64 columns weighted and added, the 64 sums in eight vector registers until the end.
    float32 C-contiguous arrays."""
    sig = types.void(w, wat, v, vat, stride, n, acc, aat)

    def codegen(context, builder, signature, args):
        ty = signature.args
        wp, vp = _at(context, builder, ty[0], args[0], args[1]), _at(context, builder, ty[2], args[2], args[3])
        ap = _at(context, builder, ty[6], args[6], args[7])
        stride, n = _i64(builder, args[4]), _i64(builder, args[5])
        accs = [cgutils.alloca_once(builder, _V8F) for _ in range(8)]
        for i, a in enumerate(accs):
            builder.store(_v8(builder, builder.gep(ap, [ir.Constant(_I64, 8 * i)])), a)
        with cgutils.for_range(builder, n) as loop:
            j = loop.index
            wv = _bcast8(builder, builder.gep(wp, [j]))
            row = builder.gep(vp, [builder.mul(j, stride)])
            for i in range(8):
                builder.store(_fma(builder, accs[i], wv, _v8(builder, builder.gep(row, [ir.Constant(_I64, 8 * i)]))),
                              accs[i])
        for i, a in enumerate(accs):
            builder.store(builder.load(a), builder.bitcast(builder.gep(ap, [ir.Constant(_I64, 8 * i)]),
                                                           _V8F.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _transpose_add8(builder, a):
    """One vector whose lane i is the sum of the eight lanes of a[i] (eight vectors): pairs of lanes, then
    quads, then halves."""
    ev, od = [0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15]
    b = [builder.fadd(_mix(builder, a[i], a[i + 1], ev), _mix(builder, a[i], a[i + 1], od), flags=_FAST)
         for i in range(0, 8, 2)]
    lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    c = [builder.fadd(_mix(builder, b[i], b[i + 1], lo), _mix(builder, b[i], b[i + 1], hi), flags=_FAST)
         for i in range(0, 4, 2)]
    return builder.fadd(_mix(builder, c[0], c[1], [0, 1, 2, 3, 8, 9, 10, 11]),
                        _mix(builder, c[0], c[1], [4, 5, 6, 7, 12, 13, 14, 15]), flags=_FAST)


@intrinsic
def dots2x4(typingctx, q, qat, qstride, k, kat, kstride, n, out, oat, ostride):
    """out.flat[oat + h * ostride + i] = sum_{d < n} q.flat[qat + h * qstride + d] * k.flat[kat + i * kstride + d]
    for heads h < 2 and keys i < 4: two query heads against four keys, eight vector sums reduced together.
    Each key vector is loaded (and widened from float16) once for both heads: 6 loads per 8 FMAs where
    dots8 (one head, eight keys) takes 9. n a multiple of 8; C-contiguous arrays, float32 (k: float32 or
    float16 bits, uint16)."""
    sig = types.void(q, qat, qstride, k, kat, kstride, n, out, oat, ostride)

    def codegen(context, builder, signature, args):
        ty = signature.args
        qp, kp = _at(context, builder, ty[0], args[0], args[1]), _at(context, builder, ty[3], args[3], args[4])
        qstride, kstride, n, ostride = (_i64(builder, args[i]) for i in (2, 5, 6, 9))
        qrows = [builder.gep(qp, [builder.mul(qstride, ir.Constant(_I64, h))]) for h in range(2)]
        krows = [builder.gep(kp, [builder.mul(kstride, ir.Constant(_I64, i))]) for i in range(4)]
        accs = [cgutils.alloca_once(builder, _V8F) for _ in range(8)]     # head h, key i: accs[4h + i]
        for a in accs:
            builder.store(ir.Constant(_V8F, [0.0] * 8), a)
        with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), n, ir.Constant(_I64, 8)) as (d, _):
            qv = [_v8(builder, builder.gep(r, [d])) for r in qrows]
            for i in range(4):
                kv = _v8(builder, builder.gep(krows[i], [d]))
                for h in range(2):
                    builder.store(_fma(builder, accs[4 * h + i], qv[h], kv), accs[4 * h + i])
        r = _transpose_add8(builder, [builder.load(x) for x in accs])
        op = _at(context, builder, ty[7], args[7], args[8])
        v4, i4 = ir.VectorType(ir.FloatType(), 4), ir.VectorType(_I32, 4)
        for h in range(2):
            part = builder.shuffle_vector(r, r, ir.Constant(i4, [4 * h + i for i in range(4)]))
            at = builder.gep(op, [builder.mul(ostride, ir.Constant(_I64, h))])
            builder.store(part, builder.bitcast(at, v4.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def axpy32x2(typingctx, w, wat, wstride, v, vat, vstride, n, acc, aat, astride):
    """acc.flat[aat + h * astride + d] += sum_{j < n} w.flat[wat + h * wstride + j] * v.flat[vat + j * vstride + d]
    for heads h < 2 and d < 32: two heads' weighted sums of n value rows' 32 columns in eight vector
    registers, each value vector loaded (and widened) once for both heads. C-contiguous arrays, float32
    (v: float32 or float16 bits, uint16)."""
    sig = types.void(w, wat, wstride, v, vat, vstride, n, acc, aat, astride)

    def codegen(context, builder, signature, args):
        ty = signature.args
        wp, vp = _at(context, builder, ty[0], args[0], args[1]), _at(context, builder, ty[3], args[3], args[4])
        ap = _at(context, builder, ty[7], args[7], args[8])
        wstride, vstride, n, astride = (_i64(builder, args[i]) for i in (2, 5, 6, 9))
        wrows = [builder.gep(wp, [builder.mul(wstride, ir.Constant(_I64, h))]) for h in range(2)]
        arows = [builder.gep(ap, [builder.mul(astride, ir.Constant(_I64, h))]) for h in range(2)]
        accs = [cgutils.alloca_once(builder, _V8F) for _ in range(8)]     # head h, columns 8c..: accs[4h + c]
        for h in range(2):
            for c in range(4):
                builder.store(_v8(builder, builder.gep(arows[h], [ir.Constant(_I64, 8 * c)])), accs[4 * h + c])
        with cgutils.for_range(builder, n) as loop:
            j = loop.index
            row = builder.gep(vp, [builder.mul(j, vstride)])
            vv = [_v8(builder, builder.gep(row, [ir.Constant(_I64, 8 * c)])) for c in range(4)]
            for h in range(2):
                wv = _bcast8(builder, builder.gep(wrows[h], [j]))
                for c in range(4):
                    builder.store(_fma(builder, accs[4 * h + c], wv, vv[c]), accs[4 * h + c])
        for h in range(2):
            for c in range(4):
                builder.store(builder.load(accs[4 * h + c]),
                              builder.bitcast(builder.gep(arows[h], [ir.Constant(_I64, 8 * c)]), _V8F.as_pointer()),
                              align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def max_f32(typingctx, a, b):
    """The larger of float32 a, b as llvm.maxnum: a loop over it vectorises to vmaxps, where Numba's max()
    becomes a compare and a store only where it changed (vmaskmovps, which is slow on AMD)."""
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 2),
                                            "llvm.maxnum.f32")
        return builder.call(fn, args)

    return sig, codegen


MM_ROWS, MM_COLS = 4, 16    # the block mm4x16 computes: 8 vector accumulators, 2 loads of b and 4 of a per 8 FMAs


@intrinsic
def mm4x16(typingctx, a, aat, astride, akstride, b, bat, bstride, n, c, cat, cstride, accumulate):
    """c.flat[cat + i * cstride + j] (+)= sum_{k < n} a.flat[aat + i * astride + k * akstride] *
    b.flat[bat + k * bstride + j] for i < 4, j < 16: a 4 x 16 block of a matrix product in eight vector
    registers, each row of b loaded once for the four of a (the FMA units, not the loads, set the pace).
    `accumulate` 0: c is overwritten. C-contiguous arrays, float32 (b: float32 or float16 bits, uint16)."""
    sig = types.void(a, aat, astride, akstride, b, bat, bstride, n, c, cat, cstride, accumulate)

    def codegen(context, builder, signature, args):
        ty = signature.args
        ap, bp = _at(context, builder, ty[0], args[0], args[1]), _at(context, builder, ty[4], args[4], args[5])
        cp = _at(context, builder, ty[8], args[8], args[9])
        astride, akstride, bstride, n, cstride = (_i64(builder, args[i]) for i in (2, 3, 6, 7, 10))
        arows = [builder.gep(ap, [builder.mul(astride, ir.Constant(_I64, i))]) for i in range(MM_ROWS)]
        cvec = [builder.bitcast(builder.gep(cp, [builder.add(builder.mul(cstride, ir.Constant(_I64, i)),
                                                              ir.Constant(_I64, 8 * h))]), _V8F.as_pointer())
                for i in range(MM_ROWS) for h in range(2)]
        keep = builder.icmp_signed("!=", args[11], ir.Constant(args[11].type, 0))
        accs = [cgutils.alloca_once(builder, _V8F) for _ in range(2 * MM_ROWS)]
        zero = ir.Constant(_V8F, [0.0] * 8)
        for x, p in zip(accs, cvec):
            builder.store(builder.select(keep, builder.load(p, align=4), zero), x)
        with cgutils.for_range(builder, n) as loop:
            k = loop.index
            row = builder.gep(bp, [builder.mul(k, bstride)])
            bv = [_v8(builder, builder.gep(row, [ir.Constant(_I64, 8 * h)])) for h in range(2)]
            ak = builder.mul(k, akstride)
            for i in range(MM_ROWS):
                av = _bcast8(builder, builder.gep(arows[i], [ak]))
                for h in range(2):
                    builder.store(_fma(builder, accs[2 * i + h], av, bv[h]), accs[2 * i + h])
        for x, p in zip(accs, cvec):
            builder.store(builder.load(x), p, align=4)
        return context.get_dummy_value()

    return sig, codegen


# float16 as the KV cache holds it (uint16 bits: Numba has no float16 on the CPU)
_HALF_SCALE = np.float32(2.0 ** 112)


@njit(inline="always")
def half_to_f32(h):
    """The float32 value of float16 bits h, exactly: sign and exponent|mantissa moved to float32's
    places make 2^-112 times the value (normal and subnormal halves alike), then one multiply. (Inf and
    NaN come out as large finite numbers; the cache never holds them from finite activations below
    65504.)"""
    b = np.int32(h)
    return f32_from_bits(((b & 0x8000) << 16) | ((b & 0x7FFF) << 13)) * _HALF_SCALE


@njit(cache=True)
def f32_to_half(x):
    """float16 bits (uint16) of float32 x, rounded to nearest, ties to even, as NumPy's astype(float16):
    overflow to +-inf, underflow through the subnormals to +-0."""
    b = bits_of_f32(x)
    sign = (b >> 16) & 0x8000
    exp = (b >> 23) & 0xFF
    man = b & 0x7FFFFF
    if exp == 0xFF:                                   # inf, NaN
        return np.uint16(sign | 0x7C00 | (0x200 if man else 0))
    e = exp - 127 + 15
    if e >= 31:
        return np.uint16(sign | 0x7C00)
    if e <= 0:                                        # a subnormal half (or zero)
        if e < -10:
            return np.uint16(sign)
        man |= 0x800000
        shift = 14 - e
        h = man >> shift
        rem, half = man & ((1 << shift) - 1), 1 << (shift - 1)
    else:
        h = (e << 10) | (man >> 13)
        rem, half = man & 0x1FFF, 0x1000
    if rem > half or (rem == half and (h & 1)):
        h += 1                                        # a carry into the exponent is right (up to inf)
    return np.uint16(sign | h)


@intrinsic
def bits_of_f32(typingctx, x):
    """The IEEE bits of float32 x as an int32 (a bitcast)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


def kv_value(x):
    """A cache element as float32: float16 bits (uint16) widened, float32 as it is."""


@overload(kv_value)
def _kv_value(x):
    if isinstance(x, types.Integer):
        return lambda x: half_to_f32(x)
    return lambda x: np.float32(x)


def kv_element(arr, x):
    """float32 x as an element of the cache array arr: float16 bits for a uint16 cache."""


@overload(kv_element)
def _kv_element(arr, x):
    if isinstance(arr.dtype, types.Integer):
        return lambda arr, x: f32_to_half(x)
    return lambda arr, x: np.float32(x)


lean_caches(globals())
