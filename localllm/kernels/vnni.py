"""Integer-dot matrix kernels for AVX-512 VNNI (vpdpbusd): decode and prefill on the int8-dot layout.

The layout is avx2.py's (Int8DotLayout: 32-row groups, per 32-column block four row octets of 32-byte
vectors whose byte 4*r + j pairs with activation column quad j). AVX2 multiplies those bytes with
vpmaddubsw + vpmaddwd and int16 sums; `vpdpbusd` does u8 x s8 products summed by four straight into
int32, so one instruction replaces two or three and nothing saturates. Weights are the unsigned side:
nibbles and shifted codes as they are; Q8_0's signed codes are flipped to u8 (w + 128, one xor) and
128 * sum(x_q) taken off again, the correction the shifted modes already make (lo * sum(x_q)).

One tile kernel serves both paths: TT activation rows against one 32x32 block, the weight vectors
unpacked once per pair of row octets and used for every row of the tile. Decode runs TT = 1 over the row
groups in parallel; prefill quantizes the whole chunk's activations to int8 per 32 columns (as
llama.cpp does for its batched integer dots) and runs TT = 8 tiles (the rows left over one at a time):
110-180 GMAC/s on 2 Zen 4 cores for Qwen2.5's matrices (medians 0-25% above 4-row tiles in interleaved
runs on 2026-12-03, within this VM's noise at best), ~1.4x dequantizing to float32 and calling sgemm.
Each tile size is its own block loop (_make_group), so decode compiles only the one-row tile.
An empty inline asm hides from LLVM that the four row octets of a tile read the same activation bytes:
otherwise it keeps all 8*TT broadcasts live at once and spills them (1233 stack accesses in the kernel).

Scales and offsets (per 32 rows x block) are read as float16 bits where float16 holds all of a matrix's
exactly (the legacy formats' d and m are float16 in the file; the K-quants' d * sc products are not):
the kind's SCALE16 bit, uint16 arrays converted in the kernel (vcvtph2ps). Results are bit-identical to
float32 scales, and Qwen2.5-0.5B's decode reads 415 MB instead of 439 MB a token.

The vectors are 512-bit: the layout's row octets are 32 bytes each, and a vector holds two of them
(octets 2p and 2p + 1 joined as they load; their scales, offsets and accumulators are adjacent already),
against the same broadcast activation quad. On the Zen 5 VM (2026-12-08), which runs 512-bit vectors at
full width, that took pp512 from 555 to 697-756 tokens/s on Qwen2.5, 1473-1483 to 1851-1877 on Gemma 3
and 1280 to 1580-1824 on SmolLM2 over 256-bit vectors (one octet each, `_make_tile(tt, lanes=1)`,
alternating runs of `localllm bench`), and decode by 0-5 %. Zen 4 runs a 512-bit vector as two halves,
so there it halves the instructions to issue, not the work.

These kernels are chosen where llvmlite reports avx512vnni and avx512vl and LLVM takes the VNNI
intrinsics' byte-vector operands (LLVM >= 22; older releases declared them on int32 vectors), unless
LOCALLLM_KERNEL is `avx2` or `float`. The choice is data (the layout's `vnni` flag, in its kind), so
both kernels stay testable on one machine. Numba's own cache would not see edits to this module from
the cached functions that call it; entry.LeanCache's key adds a digest of every kernel source, so they
recompile.

Decode streams each matrix once, block after block: the one-row tile prefetches the cache lines
PREFETCH (8 KB) ahead of its block (avx2.prefetch_lines, as the AVX2 decode kernel does 1-2 KB ahead;
a prefetch never faults, past the end of the array included). On
the Zen 5 VM one thread's decode kernel over a 151 MB Q8_0 matrix went from 27-28 to 40 GB/s (a
plain read: 41), and tg128 from 369-390 to 486-495 tokens/s on SmolLM2 and from 135-138 to 149-154 on
Qwen2.5 (Gemma 3: 166-228 against 167-176, the host's bandwidth moving; alternating `localllm bench`
runs). 4 KB ahead gave 36-37 GB/s, 16 KB 36; a prefetch every other line, 30-32.
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import avx2
from .avx2 import (BLOCK, NIB5, NIB6, NIBBLES, OCTET_BYTES, ROWS, S8, _splat, _vload, _x86, high_bits, high_vectors,
                   kind_mode_lo, n_groups, prefetch_lines, quantized, row_factors, scale_at)
from .entry import lean_caches


def _host_has_vnni() -> bool:
    try:
        import llvmlite.binding as llvm
        if llvm.llvm_version_info[0] < 22:
            return False
        f = llvm.get_host_cpu_features()
        return bool(f.get("avx512vnni", False) and f.get("avx512vl", False) and f.get("avx512bw", False))
    except Exception:
        return False


AVAILABLE = avx2.AVAILABLE and _host_has_vnni()          # compiled only when True
ENABLED = AVAILABLE and avx2.ENABLED and os.environ.get("LOCALLLM_KERNEL", "auto").lower() != "avx2"

PREFETCH = 8192       # decode: bytes ahead of its block that the one-row tile prefetches (as avx2.PREFETCH)
LANES = 2              # row octets per vector: 512-bit vectors (see the module's docstring)
TT = 8                 # activation rows per prefill tile (weights unpacked once for all of them)
T_CHUNK = 256           # activation rows per pass over the matrix (256 x K int8 codes: about one core's L2)
PAR_CHUNKS = avx2.PAR_CHUNKS

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V32I8 = ir.VectorType(_I8, 32)
_FAST = ("fast",)


def _concat(builder, vs):
    """One vector of the vectors vs (all of one type) side by side: <n x T> each -> <len(vs)*n x T>."""
    while len(vs) > 1:
        n = vs[0].type.count
        mask = ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))
        vs = [builder.shuffle_vector(vs[i], vs[i + 1], mask) for i in range(0, len(vs), 2)]
    return vs[0]


def _make_tile(tt: int, lanes: int = LANES):
    """The LLVM IR kernel for tt activation rows x one 32-row, 32-column block of a matrix.

    tile(mode, halves, q, qat, xq, xat, xstride, scale, sat, sdat, offset, oat, odat, dv, cv, xsv, has_off, acc):
    mode (NIBBLES, NIB5, NIB6, S8) and halves (scale groups per block: 1 or 2) pick one of the eight
    bodies compiled into it (a switch; the values are the same for every block of a matrix),
    q uint8 (the layout's bytes, block at qat), xq int8 (row t of the tile at xat + t*xstride),
    scale/offset float32, or uint16 holding float16 (this block's first group of row 0 at sat/oat,
    halves 32 apart, octets 8), or int8 two-level planes (repacked.two_level: the group's int8 sc at byte
    sat/oat as before, the plane's float32 d of row 0 at byte sdat/odat; the scale is d * sc, in float32),
    dv float32 (tt,) activation scale d per row, cv int32 (2*tt,) code-shift correction per row and
    half (lo * sum(x_q)), xsv float32 (2*tt,) d * sum(x_q) per row and half (for offsets),
    acc float32 (tt, 32) += the block's contribution.

    lanes: row octets per vector: 1 (256-bit vectors, one octet each) or 2 (512-bit: octets 2p and
    2p + 1 side by side, their 32-byte code vectors joined as they load; half the instructions where
    the CPU runs 512-bit vectors at full width).
    """
    nb = 32 * lanes                              # bytes per vector
    v_i8 = ir.VectorType(_I8, nb)
    v_i32, v_f = ir.VectorType(_I32, nb // 4), ir.VectorType(ir.FloatType(), nb // 4)
    v_s8, v_s16, v_h = (ir.VectorType(_I8, nb // 4), ir.VectorType(ir.IntType(16), nb // 4),
                        ir.VectorType(ir.HalfType(), nb // 4))
    dot = "llvm.x86.avx512.vpdpbusd.256" if lanes == 1 else "llvm.x86.avx512.vpdpbusd.512"

    @intrinsic
    def tile(typingctx, mode, halves, q, qat, xq, xat, xstride, scale, sat, sdat, offset, oat, odat, dv, cv, xsv,
             has_off, acc):
        sig = types.void(mode, halves, q, qat, xq, xat, xstride, scale, sat, sdat, offset, oat, odat, dv, cv, xsv,
                         has_off, acc)

        def codegen(context, builder, signature, all_args):
            a_mode, a_halves, args = all_args[0], all_args[1], all_args[2:]
            (_, a_qat, _, a_xat, a_xs, _, a_sat, a_sdat, _, a_oat, a_odat, _, _, _, a_has, _) = args
            arr = lambda i: context.make_array(signature.args[i + 2])(context, builder, args[i]).data
            qp, xp, sp, op, dp, cp, xsp, ap = arr(0), arr(2), arr(5), arr(8), arr(11), arr(12), arr(13), arr(15)
            i64 = lambda v: builder.sext(v, _I64) if v.type != _I64 else v
            qat64, xat64, xs64, sat64, oat64 = (i64(v) for v in (a_qat, a_xat, a_xs, a_sat, a_oat))
            sdat64, odat64 = i64(a_sdat), i64(a_odat)
            c64 = lambda n: ir.Constant(_I64, n)
            lo4 = ir.Constant(v_i8, [15] * nb)
            sh4 = ir.Constant(v_i8, [4] * nb)
            flip = ir.Constant(v_i8, [-128] * nb)
            vdp = lambda acc, w, x: _x86(builder, dot, v_i32, acc, w, x)
            s16, o16 = (signature.args[i].dtype == types.uint16 for i in (7, 10))
            two = signature.args[7].dtype == types.int8

            def fvec(ptr, at, half, dat=None):    # 8*lanes scales (float32, float16 bits widened, or d * sc)
                if two:
                    sc = builder.sitofp(builder.sext(_vload(builder, ptr, at, v_s8, 1), v_i32), v_f)
                    return builder.fmul(_vload(builder, ptr, dat, v_f, 4), sc)   # no fast flags: as at load
                if half:
                    return builder.fpext(builder.bitcast(_vload(builder, ptr, at, v_s16, 1), v_h), v_f)
                return _vload(builder, ptr, at, v_f, 4)

            def scalar(ptr, at):
                return builder.load(builder.gep(ptr, [c64(at)]), align=4)

            def opaque(ptr):
                # An empty asm that "changes" the pointer: LLVM can no longer see that the octets read the
                # same activation bytes, so it does not share the 8*tt broadcasts between them (spilling
                # them to the stack) but folds each into its vpdpbusd as a {1to8} memory operand.
                return builder.asm(ir.FunctionType(ptr.type, [ptr.type]), "", "=r,0", [ptr], False)

            def xquad(xb, t, quad):               # 4 activation bytes broadcast to every 32-bit lane
                at = builder.add(builder.add(xat64, builder.mul(xs64, c64(t))), c64(4 * quad))
                p = builder.bitcast(builder.gep(xb, [at]), _I32.as_pointer())
                return builder.bitcast(_splat(builder, builder.load(p, align=1), v_i32), v_i8)

            def load(mode, o, at):                # bytes at..at+31 of octets o..o+lanes-1, side by side
                return _concat(builder, [_vload(builder, qp, builder.add(qat64, c64((o + k) * OCTET_BYTES[mode] + at)),
                                                _V32I8, 1) for k in range(lanes)])

            def codes(mode, o):                   # the octets' 8 u8 code vectors, vector i pairs with quad i
                if mode == S8:
                    return [builder.xor(load(mode, o, 32 * c), flip) for c in range(8)]
                ws = [load(mode, o, 32 * v) for v in range(4)]
                hvs = high_vectors(builder, mode, lambda at: load(mode, o, at))
                out = []
                for v, w in enumerate(ws):
                    pair = [builder.and_(w, lo4), builder.and_(builder.lshr(w, sh4), lo4)]
                    if hvs:
                        pair = [builder.or_(p, high_bits(builder, mode, hvs, 2 * v + h)) for h, p in enumerate(pair)]
                    out += pair
                return out

            def body(mode, halves, with_offsets):
                quads_per_half = 8 // halves
                if tt == 1:                       # decode streams the matrix: ask for what comes next
                    prefetch_lines(builder, qp, builder.add(qat64, c64(PREFETCH)), 4 * OCTET_BYTES[mode])
                for o in range(0, 4, lanes):
                    w = codes(mode, o)
                    xb = opaque(xp) if tt > 1 else xp
                    sv = [fvec(sp, builder.add(sat64, c64(32 * h + 8 * o)), s16, builder.add(sdat64, c64(32 * o)))
                          for h in range(halves)]
                    ov = [fvec(op, builder.add(oat64, c64(32 * h + 8 * o)), o16, builder.add(odat64, c64(32 * o)))
                          for h in range(halves)] if with_offsets else []
                    for t in range(tt):
                        accp = builder.bitcast(builder.gep(ap, [c64(32 * t + 8 * o)]), v_f.as_pointer())
                        a = builder.load(accp, align=4)
                        d = _splat(builder, scalar(dp, t), v_f)
                        for h in range(halves):
                            quads = range(h * quads_per_half, (h + 1) * quads_per_half)
                            start = _splat(builder, scalar(cp, 2 * t + h), v_i32)
                            # two dependency chains per half keep the dot unit busy
                            chains = [start, ir.Constant(v_i32, [0] * (nb // 4))]
                            for n, i in enumerate(quads):
                                chains[n & 1] = vdp(chains[n & 1], w[i], xquad(xb, t, i))
                            isum = builder.add(chains[0], chains[1])
                            f = builder.sitofp(isum, v_f)
                            a = builder.fadd(a, builder.fmul(f, builder.fmul(sv[h], d, flags=_FAST), flags=_FAST),
                                             flags=_FAST)
                            if with_offsets:
                                xs = _splat(builder, scalar(xsp, 2 * t + h), v_f)
                                a = builder.fadd(a, builder.fmul(ov[h], xs, flags=_FAST), flags=_FAST)
                        builder.store(a, accp, align=4)

            key = builder.add(builder.mul(i64(a_mode), c64(2)), builder.sub(i64(a_halves), c64(1)))
            done = builder.append_basic_block("tile.done")
            switch = builder.switch(key, done)
            for mode in (NIBBLES, NIB5, NIB6, S8):
                for halves in (1, 2):
                    case = builder.append_basic_block(f"tile.m{mode}h{halves}")
                    switch.add_case(ir.Constant(_I64, 2 * mode + halves - 1), case)
                    builder.position_at_end(case)
                    has = builder.icmp_unsigned("!=", a_has, ir.Constant(a_has.type, 0))
                    with builder.if_else(has) as (yes, no):
                        with yes:
                            body(mode, halves, True)
                        with no:
                            body(mode, halves, False)
                    builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return tile


@njit(cache=True, inline="always")
def _corrections(mode, lo):
    """The code shift the kernel undoes with sum(x_q): lo for shifted modes, -128 for flipped Q8_0 codes."""
    return -128 if mode == S8 else (lo if mode == NIB5 or mode == NIB6 else 0)


if AVAILABLE:
    def _make_group(tile, tt):
        """The loop over a row group's blocks for tiles of tt rows: one per tile size, so that code
        calling only the one-row tile (decode) does not compile the others."""
        @njit(inline="always")
        def group(mode, halves, corr, g, t0, q, scale, offset, has_off, xq, xd, xqs, dv, cv, xsv, acc):
            """acc (tt, 32) = rows t0..t0+tt of the activation against row group g, over every block."""
            nblk = xd.shape[1]
            k_n = xq.shape[1]
            g_bytes = q.shape[1] * q.shape[2]
            b_bytes = g_bytes // nblk
            ng = n_groups(scale)
            acc[:] = 0.0
            for b in range(nblk):
                row_factors(xd, xqs, t0, tt, b, halves, corr, dv, cv, xsv)
                dat, sat = scale_at(scale, g, b, halves, ng)
                qat, xat = g * g_bytes + b * b_bytes, t0 * k_n + b * BLOCK
                tile(mode, halves, q, qat, xq, xat, k_n, scale, sat, dat, offset, sat, dat, dv, cv, xsv, has_off, acc)
        return group

    # one row (decode, and the rows of a chunk left over), TT rows (prefill tiles)
    _group1 = _make_group(_make_tile(1, LANES), 1)
    _groupT = _make_group(_make_tile(TT, LANES), TT)

    @njit(cache=True, inline="always")
    def _groups1(mode, lo, q, scale, offset, xq, xd, xqs, out, g0, g1):
        """out[0, rows of groups g0..g1-1] for one activation row (decode), serially."""
        halves = n_groups(scale) // xd.shape[1]
        has_off = offset.shape[1] > 0
        corr = _corrections(mode, lo)
        n_rows = out.shape[1]
        acc = np.empty((1, ROWS), np.float32)
        dv, cv, xsv = np.empty(1, np.float32), np.empty(2, np.int32), np.empty(2, np.float32)
        for g in range(g0, g1):
            _group1(mode, halves, corr, g, 0, q, scale, offset, has_off, xq, xd, xqs, dv, cv, xsv, acc)
            r0 = g * ROWS
            for r in range(min(ROWS, n_rows - r0)):
                out[0, r0 + r] = acc[0, r]

    @njit(cache=True, fastmath=True)
    def matvec_vnni_groups(kind, q, scale, offset, xq, xd, xqs, out, g0, g1):
        """out[0, rows of row groups g0..g1-1] = x_hat @ W.T for one activation row given by
        quantize_rows' outputs (1, ...), serially: one thread's share of a decode product."""
        mode, lo = kind_mode_lo(kind)
        _groups1(mode, lo, q, scale, offset, xq, xd, xqs, out, g0, g1)

    @njit(cache=True, parallel=True, fastmath=True)
    def matmul_vnni_q(mode, lo, q, scale, offset, xq, xd, xqs, out):
        """out (T, n_rows) = x_hat @ W.T for W in the int8-dot layout q (G, ..., 32), scale/offset as in
        PackedMatrix (offset (G, 0, 32) when none), x_hat given by quantize_rows' outputs (T rows)."""
        n_grp = q.shape[0]
        halves = n_groups(scale) // xd.shape[1]
        has_off = offset.shape[1] > 0
        corr = _corrections(mode, lo)
        t_n, n_rows = out.shape
        if t_n == 1:                       # decode: one row, the row groups split into PAR_CHUNKS runs
            n_chunks = min(n_grp, PAR_CHUNKS)
            for c in prange(n_chunks):
                _groups1(mode, lo, q, scale, offset, xq, xd, xqs, out, c * n_grp // n_chunks,
                         (c + 1) * n_grp // n_chunks)
            return
        for c0 in range(0, t_n, T_CHUNK):  # a chunk of rows at a time, row groups in parallel
            c1 = min(t_n, c0 + T_CHUNK)
            for g in prange(n_grp):
                acc = np.empty((TT, ROWS), np.float32)
                dv, cv, xsv = np.empty(TT, np.float32), np.empty(2 * TT, np.int32), np.empty(2 * TT, np.float32)
                r0 = g * ROWS
                nr = min(ROWS, n_rows - r0)
                t0 = c0
                while t0 + TT <= c1:
                    _groupT(mode, halves, corr, g, t0, q, scale, offset, has_off, xq, xd, xqs, dv, cv, xsv, acc)
                    for t in range(TT):
                        for r in range(nr):
                            out[t0 + t, r0 + r] = acc[t, r]
                    t0 += TT
                for t1 in range(t0, c1):    # the rows left over, one at a time
                    _group1(mode, halves, corr, g, t1, q, scale, offset, has_off, xq, xd, xqs, dv, cv, xsv, acc)
                    for r in range(nr):
                        out[t1, r0 + r] = acc[0, r]
else:
    @njit(cache=True)
    def matmul_vnni_q(mode, lo, q, scale, offset, xq, xd, xqs, out):
        raise RuntimeError("the VNNI kernel needs AVX-512 VNNI")

    @njit(cache=True)
    def matvec_vnni_groups(kind, q, scale, offset, xq, xd, xqs, out, g0, g1):
        raise RuntimeError("the VNNI kernel needs AVX-512 VNNI")


@njit(cache=True)
def matmul_vnni(kind, q, scale, offset, x, out):
    """out (T, n_rows) = x_hat @ W.T, x float32 (T, K) quantized here to int8 per 32 columns."""
    mode, lo = kind_mode_lo(kind)
    xq, xd, xqs = quantized(x)
    matmul_vnni_q(mode, lo, q, scale, offset, xq, xd, xqs, out)


lean_caches(globals())
