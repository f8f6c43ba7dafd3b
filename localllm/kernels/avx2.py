"""Integer-dot kernels for AVX2 (vpmaddubsw / vpmaddwd), decode and prefill: the llama.cpp idea in a
row-interleaved layout.

The float decode kernels (repacked.py, simd.py) zero-extend, convert and FMA every weight and are compute
bound (~12-18 G weights/s on 2 cores). Here the activation row is quantized once per matrix product to
int8 per 32 columns (d = amax/127, like llama.cpp's q8_0), and the weights are multiplied as bytes:
`vpmaddubsw(weights u8, x s8)` gives int16 per (row, column pair), a few of those are added in int16,
and `vpmaddwd(.., ones)` sums each row's pairs to int32, 8 rows x 4 columns per 32-byte vector.
The result is exactly W @ x_hat (x_hat the dequantized activation) up to float rounding: the offsets and
code shifts use the sums of the *quantized* activation, so the error is the one llama.cpp makes.

Layout (`Int8DotLayout.q`, uint8 (G, bytes a group / 32, 32), group-major like PackedMatrix.q), per row
group of 32 rows and 32-column block, row octets o = 0..3 (rows 8o..8o+7), vectors of 32 bytes, byte 4*r + j:
- mode NIBBLES (4-bit kinds): 4 vectors per octet, vector v = u[8o+r, k0+8v+j] | u[8o+r, k0+8v+4+j] << 4;
- mode NIB5 (int8 kinds whose codes span <= 31: Q5_0, Q5_1, Q5_K): u = code - lo (lo the matrix's smallest
  code; lo * sum(x_q) is added back in int32) as 5 bits: the 4 nibble vectors as above, then one vector
  whose byte 4*r + j holds bit 4 of the 8 codes at that position, bit 2v (low nibble) / 2v+1 (high) -
  160 bytes an octet, 0.625 byte a weight instead of 1 (decode is memory bound here);
- mode NIB6 (codes span <= 63: Q6_K): u = code - lo as 6 bits: the 4 nibble vectors, then two vectors
  whose byte 4*r + j holds bits 4-5 of the 8 codes at that position, code vector i = 2v + lo/hi in
  vector i // 4 at bits 2*(i % 4) - 192 bytes an octet, 0.75 byte a weight;
- mode S8 (Q8_0, full int8 range): as above with the raw int8 codes, multiplied with the sign trick
  (|w| unsigned, sign(w)*x signed: |x| <= 127 keeps 2*128*127 inside int16).
int16 headroom per vpmaddubsw: nibbles 2*15*127 = 3810 (8 added), NIB5 7874 (4), NIB6 16002 (2), S8 32512 (1).
Scale groups of 16 columns (Q2_K, Q3_K, Q6_K) are two halves of a block, summed separately.
Decode (`_make_rows`) runs a row group's whole loop over its blocks in one LLVM IR kernel, the four octets'
accumulators in registers.
Prefill (`matmul_int8dot`) quantizes every activation row the same way and runs tiles of TT = 4 rows:
each weight vector is loaded and unpacked once for the 4 rows (16 vector registers hold no more without
spilling), T_CHUNK rows a pass over the matrix. On a Zen 3 (2 cores) it runs Qwen2.5's Q5_0/Q6_K matrices
at 170-200 GOP/s at 512 rows, 2x dequantize + sgemm, and 5-10x at 16 rows, where dequantizing the
whole matrix for a few rows was most of the time (a chat prompt's prefill).
Scales and offsets come in three forms (the kernels are compiled for each, by the arrays' types): float32
(G, groups, 32), float16 bits where float16 holds them exactly (the legacy formats), and the K-quants' two
levels (repacked.two_level): so a matrix streams about its file's bytes (Qwen2.5-0.5B 398 MB a token
instead of 439 MB with float32 scales: decode 33 -> 39 tok/s on a Zen 3 without AVX-512).

Selection: wherever the host CPU has AVX2 (llvmlite's host features), unless `LOCALLLM_KERNEL=float`; else
the float kernels run. Where the CPU also has AVX-512 VNNI, vnni.py multiplies the same layout instead
(the layout's `vnni` flag, unless `LOCALLLM_KERNEL=avx2`). A matrix with this layout keeps no other copy of its codes (PackedMatrix.q is None):
prefill dequantizes from it (`dequantize_int8dot`) and small batches run the matvec once per row. The choice lives in data (the layout
built, the kind code passed to `packed_matmul`), never in compiled code, so Numba's cache (keyed on the CPU)
stays right for both; without AVX2 the driver is a stub, so no x86 intrinsic is ever compiled. The cache does not see edits to this
module from the cached functions that call it (decode.py): clear localllm/kernels/__pycache__ after changing it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .entry import entry_point, lean_caches


def _host_has_avx2() -> bool:
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except Exception:       # no feature query on this platform: read the kernel's flags
        try:
            with open("/proc/cpuinfo") as f:
                return any(line.startswith("flags") and " avx2" in line for line in f)
        except OSError:
            return False


AVAILABLE = _host_has_avx2()                                        # compiled only when True
# On by default where AVX2 is (LOCALLLM_KERNEL=float forces the float kernels): decode gets 1.4-1.7x faster
# matrix products. One-token logits move by the activation quantization (~1e-2 of their scale, the size of
# llama.cpp's own one-token vs batch gap), so tests that demand float-rounding agreement turn it off.
# Read when matrices are packed, so tests may set it before loading a model.
ENABLED = AVAILABLE and os.environ.get("LOCALLLM_KERNEL", "auto").lower() not in ("float",)

# Scales and offsets kept as float16 where that is exact, and the K-quants' in their two levels
# (repacked.two_level), for both integer-dot kernels (read when matrices are packed); LOCALLLM_SCALE16=0,
# LOCALLLM_TWO_LEVEL=0 keep float32 (for A/B runs and the tests of every form).
SCALE16 = os.environ.get("LOCALLLM_SCALE16", "1") != "0"
TWO_LEVEL = os.environ.get("LOCALLLM_TWO_LEVEL", "1") != "0"

NIBBLES, NIB5, NIB6, S8 = range(4)
KIND_BASE = 2          # packed_matmul kinds: 0 float int8, 1 float nibbles, >= 2 this kernel (mode, lo encoded)
BLOCK = 32             # columns per activation block (one d) and per kernel call
ROWS = 32              # rows per row group (repacked.R)
OCTET_BYTES = {NIBBLES: 128, NIB5: 160, NIB6: 192, S8: 256}   # bytes of one row octet of a block
_CHUNK = {NIBBLES: 8, NIB5: 4, NIB6: 2, S8: 1}   # vpmaddubsw results added in int16 before vpmaddwd
# Bytes ahead of its block that the decode kernel prefetches, every line (each thread streams its runs of
# row groups), by mode. On a Zen 3, streaming the models' matrices from RAM (medians of 8-10 interleaved
# runs): 1-2 KB ahead 5-10 % faster than none for the nibble modes and at least as fast as 4 KB; for S8
# (Q8_0 output heads) 1 KB ahead 0-7 % faster than none, 4 KB up to 10 % slower; every other line only:
# 30-50 % slower (the hardware prefetcher loses the stream). NTA or T1 hints: no different.
PREFETCH = {NIBBLES: 2048, NIB5: 2048, NIB6: 2048, S8: 1024}


VNNI_BIT = 1024        # in a kind: run the layout with the AVX-512 VNNI kernels (vnni.py), not these
SCALE16_BIT = 2048     # in a kind: scales and offsets are stored as float16 bits (uint16), exactly
TWO_LEVEL_BIT = 4096   # in a kind: scales and offsets in two levels, the K-quants' own (repacked.two_level)


def encode_kind(mode: int, lo: int, vnni: bool = False, scale16: bool = False, two_level: bool = False) -> int:
    """The `packed_matmul` kind of a layout: mode, code shift, kernel and scale form in one int (the
    kinds array is int64)."""
    return (KIND_BASE + mode + 4 * (lo + 128) + (VNNI_BIT if vnni else 0) + (SCALE16_BIT if scale16 else 0)
            + (TWO_LEVEL_BIT if two_level else 0))


@njit(cache=True)
def kind_mode_lo(kind):
    k = (kind - KIND_BASE) & (VNNI_BIT - 1)
    return k & 3, (k >> 2) - 128


@njit(cache=True)
def kind_is_vnni(kind):
    return kind >= KIND_BASE and ((kind - KIND_BASE) & VNNI_BIT) != 0


@njit(cache=True)
def kind_is_scale16(kind):
    return kind >= KIND_BASE and ((kind - KIND_BASE) & SCALE16_BIT) != 0


@njit(cache=True)
def kind_is_two_level(kind):
    return kind >= KIND_BASE and ((kind - KIND_BASE) & TWO_LEVEL_BIT) != 0


@dataclass
class Int8DotLayout:
    mode: int
    lo: int                  # subtracted from int8 codes (U8 modes), 0 otherwise
    q: np.ndarray            # uint8, the shape of PackedMatrix.q: (G, K/2 or K, 32), bytes reordered
    vnni: bool = False       # multiplied by the AVX-512 VNNI kernels (vnni.py) instead of these
    scale16: bool = False    # the matrix's scales and offsets are float16 bits, uint16 arrays
    two_level: bool = False  # they are int8 arrays (G, n_super, 4 + groups, 32), repacked.two_level

    @property
    def kind(self) -> int:
        return encode_kind(self.mode, self.lo, self.vnni, self.scale16, self.two_level)

    def like(self, q: np.ndarray) -> "Int8DotLayout":
        """The same layout kind over other codes (a slice or a stack of matrices of this kind)."""
        return Int8DotLayout(self.mode, self.lo, q, self.vnni, self.scale16, self.two_level)

    @property
    def nbytes(self) -> int:
        return self.q.nbytes


PAR_CHUNKS = 16       # prange items per product (the pool splits them evenly; one acc per item)
TT = 4                # activation rows per prefill tile (16 vector registers: 8 would spill)
T_CHUNK = 64          # activation rows per pass over a matrix (64 x K int8 codes stay in L2)
LAYOUT_CHUNK = 64            # row groups converted at a time (bounds the temporaries)


def code_mode(q: np.ndarray, nibbles: bool) -> tuple[int, int]:
    """(mode, lo) of the layout for codes q: NIBBLES for 4-bit codes, else by the span of the int8 codes
    (<= 31: NIB5, <= 63: NIB6, else S8), lo the smallest code (0 for S8)."""
    if nibbles:
        return NIBBLES, 0
    qi = q.view(np.int8)
    lo, hi = (int(qi.min()), int(qi.max())) if qi.size else (0, 0)
    mode = NIB5 if hi - lo <= 31 else NIB6 if hi - lo <= 63 else S8
    return mode, 0 if mode == S8 else lo


def build_layout(q: np.ndarray, gs: int, nibbles: bool, vnni: bool = False) -> Int8DotLayout | None:
    """The int8-dot layout of a PackedMatrix's codes q (uint8 (G, K/2, 32) nibbles, or int8 (G, K, 32)),
    or None where this kernel does not apply (scale groups other than 16/32 columns). `vnni`: run it with
    the AVX-512 VNNI kernels (the same bytes)."""
    n_grp, r_n = q.shape[0], q.shape[2]
    n_cols = q.shape[1] * (2 if nibbles else 1)
    if r_n != ROWS or n_cols % BLOCK or gs not in (16, 32):
        return None
    nblk = n_cols // BLOCK
    mode, lo = code_mode(q, nibbles)
    if mode in (NIB5, NIB6):   # 5 or 6 bits a code: 640 or 768 bytes a block instead of 1024
        out = np.empty((n_grp, nblk * (20 if mode == NIB5 else 24), r_n), np.uint8)
    else:                  # same shape and bytes as q, another order (see above)
        out = np.empty(q.shape, np.uint8)
    for g0 in range(0, n_grp, LAYOUT_CHUNK):
        g1 = min(n_grp, g0 + LAYOUT_CHUNK)
        c = q[g0:g1]
        n = g1 - g0
        if nibbles:
            b = c.view(np.uint8)
            u = np.empty((n, n_cols, r_n), np.uint8)          # (g, k, r) one code per byte
            u[:, 0::2] = b & 15
            u[:, 1::2] = b >> 4
            u7 = u.reshape(n, nblk, 4, 2, 4, 4, 8)            # g, blk, v, lo/hi, j, o, r
            packed = u7[:, :, :, 0] | (u7[:, :, :, 1] << np.uint8(4))   # g, blk, v, j, o, r
            out[g0:g1] = packed.transpose(0, 1, 4, 2, 5, 3).reshape(n, q.shape[1], r_n)
        elif mode == NIB5:
            u = (c.view(np.int8).astype(np.int16) - lo).astype(np.uint8)
            u7 = u.reshape(n, nblk, 4, 2, 4, 4, 8)            # g, blk, v, lo/hi, j, o, r
            nib = (u7[:, :, :, 0] & 15) | ((u7[:, :, :, 1] & 15) << np.uint8(4))   # g, blk, v, j, o, r
            hb = np.zeros((n, nblk, 4, 4, 8), np.uint8)        # g, blk, j, o, r: bit 2v+h = bit 4 of u
            for v in range(4):
                for h in range(2):
                    hb |= (u7[:, :, v, h] >> np.uint8(4)) << np.uint8(2 * v + h)
            blk = np.empty((n, nblk, 4, 160), np.uint8)        # g, blk, o, 4 nibble vectors + 1 bit vector
            blk[..., :128] = nib.transpose(0, 1, 4, 2, 5, 3).reshape(n, nblk, 4, 128)
            blk[..., 128:] = hb.transpose(0, 1, 3, 4, 2).reshape(n, nblk, 4, 32)
            out[g0:g1] = blk.reshape(n, nblk * 20, r_n)
        elif mode == NIB6:
            u = (c.view(np.int8).astype(np.int16) - lo).astype(np.uint8)
            u7 = u.reshape(n, nblk, 4, 2, 4, 4, 8)            # g, blk, v, lo/hi, j, o, r
            nib = (u7[:, :, :, 0] & 15) | ((u7[:, :, :, 1] & 15) << np.uint8(4))   # g, blk, v, j, o, r
            hb = np.zeros((n, nblk, 2, 4, 4, 8), np.uint8)     # g, blk, vector, j, o, r: bits 4-5 of u
            for v in range(4):
                for h in range(2):
                    i = 2 * v + h
                    hb[:, :, i // 4] |= (u7[:, :, v, h] >> np.uint8(4)) << np.uint8(2 * (i % 4))
            blk = np.empty((n, nblk, 4, 192), np.uint8)        # g, blk, o, 4 nibble vectors + 2 bit vectors
            blk[..., :128] = nib.transpose(0, 1, 4, 2, 5, 3).reshape(n, nblk, 4, 128)
            blk[..., 128:] = hb.transpose(0, 1, 4, 2, 5, 3).reshape(n, nblk, 4, 64)
            out[g0:g1] = blk.reshape(n, nblk * 24, r_n)
        else:
            u = (c.view(np.int8).astype(np.int16) - lo).astype(np.uint8) if mode != S8 else c.view(np.uint8)
            u6 = u.reshape(n, nblk, 8, 4, 4, 8)               # g, blk, c, j, o, r
            out[g0:g1] = u6.transpose(0, 1, 4, 2, 5, 3).reshape(n, q.shape[1], r_n)
    return Int8DotLayout(mode, lo, out, vnni)


# ---------------------------------------------------------------------------------------------------
# The kernels in LLVM IR: decode's over a row group (`_make_rows`), prefill's over a block (`_make_tile`).

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V32I8 = ir.VectorType(_I8, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V8I32 = ir.VectorType(_I32, 8)
_V8F = ir.VectorType(ir.FloatType(), 8)
_V8I8 = ir.VectorType(_I8, 8)
_V8I16 = ir.VectorType(_I16, 8)
_V8H = ir.VectorType(ir.HalfType(), 8)
_FAST = ("fast",)
F32, HALF, TWO = range(3)   # forms of a matrix's scales and offsets: float32, float16 bits, two-level int8


def _scale_form(arr_type) -> int:
    """The form of a scale or offset array, from its Numba type: (G, groups, 32) float32 or uint16
    (float16 bits), or repacked.two_level's int8 (G, n_super, 4 + groups a super-block, 32)."""
    if arr_type.ndim == 4:
        return TWO
    return HALF if arr_type.dtype == types.uint16 else F32


def _x86(builder, name, ret, *args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _splat(builder, value, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _vload(builder, base, at, vty, align):
    return builder.load(builder.bitcast(builder.gep(base, [at]), vty.as_pointer()), align=align)


def high_vectors(builder, mode, load):
    """The bit vectors of a row octet: NIB5 one, NIB6 two, each the 32 bytes at 128 + 32 i of the octet.
    load(at) gives the byte vector at byte `at` of the octet (vnni: of two octets side by side, <64 x i8>);
    the result is <n x i16> of it."""
    n = 1 if mode == NIB5 else 2 if mode == NIB6 else 0
    vs = [load(128 + 32 * i) for i in range(n)]
    return [builder.bitcast(v, ir.VectorType(_I16, v.type.count // 2)) for v in vs]


def prefetch_lines(builder, base, at, n_bytes):
    """Prefetch (read, into every cache level) each 64-byte line of the bytes base[at:at + n_bytes]."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [base.type, _I32, _I32, _I32]), "llvm.prefetch.p0")
    for line in range(0, n_bytes, 64):
        ptr = builder.gep(base, [builder.add(at, ir.Constant(_I64, line))])
        builder.call(fn, [ptr] + [ir.Constant(_I32, v) for v in (0, 3, 1)])


def high_bits(builder, mode, hvs, i):
    """The bits above the nibble of code vector i (NIB5: bit 4, NIB6: bits 4-5), at their place in each byte;
    hvs are <n x i16> bit vectors (n = 16, or 32 for vnni's 512-bit vectors), the result <2n x i8>."""
    hv, at, mask = (hvs[0], i, 16) if mode == NIB5 else (hvs[i // 4], 2 * (i % 4), 48)
    n = hv.type.count
    v16, v8 = ir.VectorType(_I16, n), ir.VectorType(_I8, 2 * n)
    if at < 4:
        hv = builder.shl(hv, ir.Constant(v16, [4 - at] * n))
    elif at > 4:
        hv = builder.lshr(hv, ir.Constant(v16, [at - 4] * n))
    return builder.and_(builder.bitcast(hv, v8), ir.Constant(v8, [mask] * (2 * n)))


def _pair_sums(builder, prods, chunk):
    """int32 <8 x i32> sum of vpmaddubsw results (<16 x i16> each): `chunk` of them added in int16, then
    vpmaddwd against ones sums each row's pairs, and those are added in int32."""
    ones = ir.Constant(_V16I16, [1] * 16)
    isum = None
    for i0 in range(0, len(prods), chunk):
        s16 = prods[i0]
        for p in prods[i0 + 1:i0 + chunk]:
            s16 = builder.add(s16, p)
        s32 = _x86(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, s16, ones)
        isum = s32 if isum is None else builder.add(isum, s32)
    return isum


def _factors(builder, ptr, form, at, dat):
    """8 scales or offsets (rows 8o..8o+7) whose first is element `at` of ptr: float32, float16 bits
    (widened: vcvtph2ps), or two-level (the plane's float32 d at byte `dat` times the int8 sc, multiplied
    as repacked.from_two_level does, without fast-math flags)."""
    if form == TWO:
        sc = builder.sitofp(builder.sext(_vload(builder, ptr, at, _V8I8, 1), _V8I32), _V8F)
        return builder.fmul(_vload(builder, ptr, dat, _V8F, 4), sc)
    if form == HALF:
        return builder.fpext(builder.bitcast(_vload(builder, ptr, at, _V8I16, 1), _V8H), _V8F)
    return _vload(builder, ptr, at, _V8F, 4)


def _make_rows(mode: int, halves: int, offsets: bool | None = None):
    """The decode kernel: one row group's 32 outputs for one activation row, the loop over the row's
    blocks written in IR with the four row octets' accumulators in registers. offsets: whether the matrix
    has offsets (None: both loops, chosen at run time by offset.shape[1]).

    rows(q, qat, xq, xd, xqs, scale, offset, g, lo, acc): q, xq, xd, xqs as in `_groups_int8dot` (row
    group g's bytes at qat), scale/offset in any of the three forms, lo the code shift; acc float32 (32,)
    is set to the row group's W @ x_hat. (A kernel per block, with Numba's loop around it working out
    each block's addresses, choosing the mode and keeping the accumulators in memory, ran ~1.3x more
    instructions a weight byte: 16-19 GB/s a core hot in cache against 17-22 here.)"""
    per_octet = 8 if mode == S8 else 4                 # code vectors per row octet
    octet_bytes = OCTET_BYTES[mode]
    per_half = per_octet // halves
    chunk = _CHUNK[mode]
    prefetch = PREFETCH[mode]

    @intrinsic
    def rows(typingctx, q, qat, xq, xd, xqs, scale, offset, g, lo, acc):
        sig = types.void(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)

        def codegen(context, builder, signature, args):
            arrs = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 3, 4, 5, 6, 9)}
            qp, xp, dp, sump, sp, op, ap = (arrs[i].data for i in (0, 2, 3, 4, 5, 6, 9))
            shape = lambda i, k: builder.extract_value(arrs[i].shape, k)
            c64 = lambda n: ir.Constant(_I64, n)
            i64 = lambda v: builder.sext(v, _I64) if v.type != _I64 else v
            qat64, g64, lo32 = i64(args[1]), i64(args[7]), builder.trunc(i64(args[8]), _I32)
            form = _scale_form(signature.args[5])
            lo4 = ir.Constant(_V32I8, [15] * 32)
            sh4 = ir.Constant(_V32I8, [4] * 32)
            if form == TWO:     # two levels: block b's plane and group are carried from block to block
                plane_bytes = builder.mul(shape(5, 2), c64(ROWS))
                plane0 = builder.mul(builder.mul(g64, shape(5, 1)), plane_bytes)
                gps = builder.sub(shape(5, 2), c64(4))
                state = [cgutils.alloca_once(builder, _I64) for _ in range(2)]     # plane (bytes), group
            else:               # block b's first scale group of row 0, in elements
                s0 = builder.mul(builder.mul(g64, shape(5, 1)), c64(ROWS))
            accs = [cgutils.alloca_once(builder, _V8F) for _ in range(4)]       # LLVM keeps them in registers
            for a in accs:
                builder.store(ir.Constant(_V8F, [0.0] * 8), a)

            def block(b, with_offsets):
                qb = builder.add(qat64, builder.mul(b, c64(4 * octet_bytes)))
                d = builder.load(builder.gep(dp, [b]))
                sums = [builder.load(builder.gep(sump, [builder.add(builder.mul(b, c64(2)), c64(h))]))
                        for h in range(2)]
                if halves == 1:
                    sums = [builder.add(sums[0], sums[1])]
                if form == TWO:
                    plane, grp = builder.load(state[0]), builder.load(state[1])
                    sat, dat = builder.add(plane, builder.mul(builder.add(grp, c64(4)), c64(ROWS))), plane
                else:
                    sat = dat = builder.add(s0, builder.mul(b, c64(ROWS * halves)))
                if prefetch:
                    prefetch_lines(builder, qp, builder.add(qb, c64(prefetch)), 4 * octet_bytes)
                xv = []                 # the block's activation quads, 4 bytes broadcast to every 32-bit lane
                for c in range(8):
                    p = builder.gep(xp, [builder.add(builder.mul(b, c64(BLOCK)), c64(4 * c))])
                    xv.append(builder.bitcast(_splat(builder, builder.load(builder.bitcast(p, _I32.as_pointer()),
                                                                           align=1), _V8I32), _V32I8))
                dv = _splat(builder, d, _V8F)
                for o in range(4):
                    ob = builder.add(qb, c64(o * octet_bytes))
                    hvs = high_vectors(builder, mode, lambda at: _vload(builder, qp, builder.add(ob, c64(at)), _V32I8, 1))
                    a = builder.load(accs[o])
                    for h in range(halves):
                        prods = []
                        for v in range(h * per_half, (h + 1) * per_half):
                            w = _vload(builder, qp, builder.add(ob, c64(32 * v)), _V32I8, 1)
                            if mode == S8:
                                aw = _x86(builder, "llvm.x86.avx2.psign.b", _V32I8, w, w)
                                sx = _x86(builder, "llvm.x86.avx2.psign.b", _V32I8, xv[v], w)
                                prods.append(_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, aw, sx))
                                continue
                            wl = builder.and_(w, lo4)
                            wh = builder.and_(builder.lshr(w, sh4), lo4)
                            if hvs:
                                wl = builder.or_(wl, high_bits(builder, mode, hvs, 2 * v))
                                wh = builder.or_(wh, high_bits(builder, mode, hvs, 2 * v + 1))
                            prods.append(_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, wl, xv[2 * v]))
                            prods.append(_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, wh, xv[2 * v + 1]))
                        isum = _pair_sums(builder, prods, chunk)
                        if mode in (NIB5, NIB6):
                            isum = builder.add(isum, _splat(builder, builder.mul(lo32, sums[h]), _V8I32))
                        at = builder.add(sat, c64(32 * h + 8 * o))
                        sv = _factors(builder, sp, form, at, builder.add(dat, c64(32 * o)))
                        a = builder.fadd(a, builder.fmul(builder.sitofp(isum, _V8F), builder.fmul(sv, dv, flags=_FAST),
                                                         flags=_FAST), flags=_FAST)
                        if with_offsets:
                            ov = _factors(builder, op, form, at, builder.add(dat, c64(32 * o)))
                            xs = _splat(builder, builder.fmul(d, builder.sitofp(sums[h], ir.FloatType())), _V8F)
                            a = builder.fadd(a, builder.fmul(ov, xs, flags=_FAST), flags=_FAST)
                    builder.store(a, accs[o])
                if form == TWO:         # the next block's group; the next plane after a super-block's last
                    grp = builder.add(grp, c64(halves))
                    wrap = builder.icmp_unsigned("==", grp, gps)
                    builder.store(builder.select(wrap, c64(0), grp), state[1])
                    builder.store(builder.select(wrap, builder.add(plane, plane_bytes), plane), state[0])

            def loop(with_offsets):
                if form == TWO:
                    builder.store(plane0, state[0])
                    builder.store(c64(0), state[1])
                with cgutils.for_range(builder, shape(3, 0)) as it:
                    block(it.index, with_offsets)

            if offsets is None:
                with builder.if_else(builder.icmp_unsigned(">", shape(6, 1), c64(0))) as (yes, no):
                    with yes:
                        loop(True)
                    with no:
                        loop(False)
            else:
                loop(offsets)
            for o in range(4):
                builder.store(builder.load(accs[o]), builder.bitcast(builder.gep(ap, [c64(8 * o)]), _V8F.as_pointer()),
                              align=4)
            return context.get_dummy_value()

        return sig, codegen

    return rows


def _make_tile(mode: int, halves: int, offsets: bool | None = None):
    """The prefill kernel: one 32-row x 32-column block for TT activation rows at once, each weight
    vector loaded and unpacked once and multiplied with the TT rows' activation quads. Same layout and
    arithmetic as `_make_rows`; the per-row values come in arrays: dv float32 (TT,) activation scales, cv int32 (2*TT,)
    code-shift corrections per row and half, xsv float32 (2*TT,) d * sum(x_q) per row and half; row t's
    codes at xat + t * xstride; acc float32 (TT, 32). offsets as in `_make_rows` (None: chosen at run time
    by has_off)."""
    octet_bytes = OCTET_BYTES[mode]
    per_half = 8 // halves             # code vectors (each with one activation quad) a half
    chunk = _CHUNK[mode]

    @intrinsic
    def tile(typingctx, q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc):
        sig = types.void(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)

        def codegen(context, builder, signature, args):
            arr = lambda i: context.make_array(signature.args[i])(context, builder, args[i]).data
            qp, xp, sp, op, dp, cp, xsp, ap = (arr(i) for i in (0, 2, 5, 7, 10, 11, 12, 14))
            i64 = lambda v: builder.sext(v, _I64) if v.type != _I64 else v
            qat64, xat64, xs64, sat64, oat64, dat64 = (i64(args[i]) for i in (1, 3, 4, 6, 8, 9))
            c64 = lambda n: ir.Constant(_I64, n)
            forms = [_scale_form(signature.args[i]) for i in (5, 7)]
            lo4 = ir.Constant(_V32I8, [15] * 32)
            sh4 = ir.Constant(_V32I8, [4] * 32)

            def fvec(ptr, form, at, o):       # as in _make_block
                return _factors(builder, ptr, form, builder.add(at, c64(8 * o)), builder.add(dat64, c64(32 * o)))

            def scalar(ptr, at):
                return builder.load(builder.gep(ptr, [c64(at)]), align=4)

            def xquad(t, c):                  # 4 activation bytes of row t broadcast to every 32-bit lane
                at = builder.add(builder.add(xat64, builder.mul(xs64, c64(t))), c64(4 * c))
                p = builder.bitcast(builder.gep(xp, [at]), _I32.as_pointer())
                return builder.bitcast(_splat(builder, builder.load(p, align=1), _V8I32), _V32I8)

            def codes(o):                     # the octet's code vectors (u8; S8: the raw int8), vector i with quad i
                base = builder.add(qat64, c64(o * octet_bytes))
                if mode == S8:
                    return [_vload(builder, qp, builder.add(base, c64(32 * c)), _V32I8, 1) for c in range(8)]
                hvs = high_vectors(builder, mode, lambda at: _vload(builder, qp, builder.add(base, c64(at)), _V32I8, 1))
                out = []
                for v in range(4):
                    w = _vload(builder, qp, builder.add(base, c64(32 * v)), _V32I8, 1)
                    pair = [builder.and_(w, lo4), builder.and_(builder.lshr(w, sh4), lo4)]
                    if hvs:
                        pair = [builder.or_(p, high_bits(builder, mode, hvs, 2 * v + h)) for h, p in enumerate(pair)]
                    out += pair
                return out

            def body(with_offsets):
                for o in range(4):
                    w = codes(o)
                    aw = [_x86(builder, "llvm.x86.avx2.psign.b", _V32I8, v, v) for v in w] if mode == S8 else w
                    sv = [fvec(sp, forms[0], builder.add(sat64, c64(32 * h)), o) for h in range(halves)]
                    ov = [fvec(op, forms[1], builder.add(oat64, c64(32 * h)), o) for h in range(halves)] \
                        if with_offsets else []
                    for t in range(TT):
                        accp = builder.bitcast(builder.gep(ap, [c64(32 * t + 8 * o)]), _V8F.as_pointer())
                        a = builder.load(accp, align=4)
                        d = _splat(builder, scalar(dp, t), _V8F)
                        for h in range(halves):
                            prods = []
                            for i in range(h * per_half, (h + 1) * per_half):
                                x = xquad(t, i)
                                if mode == S8:
                                    x = _x86(builder, "llvm.x86.avx2.psign.b", _V32I8, x, w[i])
                                prods.append(_x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, aw[i], x))
                            isum = _pair_sums(builder, prods, chunk)
                            if mode in (NIB5, NIB6):
                                isum = builder.add(isum, _splat(builder, scalar(cp, 2 * t + h), _V8I32))
                            f = builder.sitofp(isum, _V8F)
                            a = builder.fadd(a, builder.fmul(f, builder.fmul(sv[h], d, flags=_FAST), flags=_FAST),
                                             flags=_FAST)
                            if with_offsets:
                                xs = _splat(builder, scalar(xsp, 2 * t + h), _V8F)
                                a = builder.fadd(a, builder.fmul(ov[h], xs, flags=_FAST), flags=_FAST)
                        builder.store(a, accp, align=4)

            if offsets is None:
                has = builder.icmp_unsigned("!=", args[13], ir.Constant(args[13].type, 0))
                with builder.if_else(has) as (yes, no):
                    with yes:
                        body(True)
                    with no:
                        body(False)
            else:
                body(offsets)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# The kernels by (mode, halves, offsets): offsets None (both, chosen at run time) for drivers called with a
# variant known only at run time, True or False for those compiled for one variant (see rows_v).
_KEYS = [(m, h, o) for m in (NIBBLES, NIB5, NIB6, S8) for h in (1, 2) for o in (None, True, False)]
_ROWS = {key: _make_rows(*key) for key in _KEYS}
_TILES = {key: _make_tile(*key) for key in _KEYS}


# ---------------------------------------------------------------------------------------------------
# Variants: compiling for a model's matrices alone.
#
# Each driver below holds the IR kernel of every mode and halves (eight, each with and without offsets),
# chosen at run time from the matrix's kind: ~30 s of LLVM a driver and scale form, most of a first run's
# minutes of compiling (SmolLM2 179 s, Qwen2.5 230 s on a Zen 3, 2026-12-07). A matrix's *variant* is
# what its compiled code depends on: mode, scale form, kernel (AVX2 or VNNI), two halves a block or one,
# offsets or none (not the code shift, an argument). Where the variant reaches a driver as a compile-time
# constant (a closure's: repacked.matmul_packed's entry points, decode's pooled decoder), rows_v and
# tile_v emit that variant's kernel alone; where it is a run-time value, all of them, chosen at run time.

HALVES_BIT = 8192      # in a variant: scale groups of 16 columns (two halves a block)
OFFSETS_BIT = 16384    # in a variant: the matrix has offsets
_FORM_BITS = VNNI_BIT | SCALE16_BIT | TWO_LEVEL_BIT


@njit(cache=True)
def variant_of(kind, halves, has_off):
    """The variant of a matrix of `kind` (an integer-dot kind) with `halves` scale groups a block."""
    k = kind - KIND_BASE
    return (KIND_BASE + (k & 3) + (k & _FORM_BITS) + (HALVES_BIT if halves == 2 else 0)
            + (OFFSETS_BIT if has_off else 0))


def matrix_variant(kind: int, scale: np.ndarray, offset: np.ndarray, n_cols: int) -> int:
    """variant_of for a matrix's arrays (scale and offset as in PackedMatrix), in Python."""
    return variant_of.py_func(kind, n_groups.py_func(scale) // (n_cols // BLOCK), offset.shape[1] > 0)


def variant_parts(v: int) -> tuple[int, int, bool]:
    """(mode, halves, offsets) of a variant."""
    k = v - KIND_BASE
    return k & 3, 2 if k & HALVES_BIT else 1, bool(k & OFFSETS_BIT)


def rows_v(v, q, qat, xq, xd, xqs, scale, offset, g, lo, acc):
    """The decode kernel (`_make_rows`) of variant v: that variant's alone where v is a compile-time
    constant, else every mode's and halves', chosen at run time."""


def tile_v(v, q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc):
    """The prefill kernel (`_make_tile`) of variant v, as rows_v."""


# rows_v and tile_v spell out the same run-time chain over their own arguments: one chain shared by both,
# taking the arguments as a tuple (k(*args)), prefilled Qwen2.5 at 125-134 tokens/s against 154-181 with
# LOCALLLM_SPECIALIZE=0 (interleaved fresh processes, Zen 3, 2026-12-07).
def _eight(table):
    """table's eight kernels chosen at run time (offsets too): nibbles, NIB5, NIB6, S8, one half then two."""
    return tuple(table[m, h, None] for h in (1, 2) for m in (NIBBLES, NIB5, NIB6, S8))


@njit(cache=True, inline="always")
def _pick(v):
    """Which of _eight's kernels runs variant v (a run-time value)."""
    return ((v - KIND_BASE) & 3) + (4 if (v - KIND_BASE) & HALVES_BIT else 0)


@overload(rows_v, prefer_literal=True)
def _ol_rows_v(v, q, qat, xq, xd, xqs, scale, offset, g, lo, acc):
    if isinstance(v, types.IntegerLiteral):
        kernel = _ROWS[variant_parts(v.literal_value)]

        def one(v, q, qat, xq, xd, xqs, scale, offset, g, lo, acc):
            kernel(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        return one
    k0, k1, k2, k3, k4, k5, k6, k7 = _eight(_ROWS)

    def any_(v, q, qat, xq, xd, xqs, scale, offset, g, lo, acc):
        i = _pick(v)
        if i == 0:
            k0(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        elif i == 1:
            k1(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        elif i == 2:
            k2(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        elif i == 3:
            k3(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        elif i == 4:
            k4(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        elif i == 5:
            k5(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        elif i == 6:
            k6(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
        else:
            k7(q, qat, xq, xd, xqs, scale, offset, g, lo, acc)
    return any_


# inline: the prefill loop calls this once a block. Compiled as a function of its own (an overload's
# default) and called there, prefill ran 10-25 % slower than with the kernels inlined (Qwen2.5 pp512
# 113-126 against 131-170 tokens/s, interleaved fresh processes, Zen 3, 2026-12-07).
@overload(tile_v, prefer_literal=True, inline="always")
def _ol_tile_v(v, q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc):
    if isinstance(v, types.IntegerLiteral):
        kernel = _TILES[variant_parts(v.literal_value)]

        def one(v, q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc):
            kernel(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        return one
    k0, k1, k2, k3, k4, k5, k6, k7 = _eight(_TILES)

    def any_(v, q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc):
        i = _pick(v)
        if i == 0:
            k0(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        elif i == 1:
            k1(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        elif i == 2:
            k2(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        elif i == 3:
            k3(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        elif i == 4:
            k4(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        elif i == 5:
            k5(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        elif i == 6:
            k6(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
        else:
            k7(q, qat, xq, xat, xstride, scale, sat, offset, oat, dat, dv, cv, xsv, has_off, acc)
    return any_


# ---------------------------------------------------------------------------------------------------
# Activation quantization and the drivers.

@njit(cache=True)
def quantize_activation(x, xq, xd, xqs):
    """x float32 (K,) -> xq int8 (K,) = round(x / d), d = amax/127 per 32 columns in xd (K/32,);
    xqs int32 (K/16,) = sums of xq per 16 columns (offsets and code shifts use them)."""
    for b in range(xd.shape[0]):
        amax = np.float32(0.0)
        for k in range(b * BLOCK, (b + 1) * BLOCK):
            amax = max(amax, abs(x[k]))
        d = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        xd[b] = d
        for h in range(2):
            s = 0
            for k in range(b * BLOCK + 16 * h, b * BLOCK + 16 * h + 16):
                v = np.int32(np.rint(x[k] * inv))
                xq[k] = v
                s += v
            xqs[2 * b + h] = s


@njit(cache=True, inline="always")
def scale_at(scale, g, b, halves, ng):
    """(dat, sat) of block b of row group g: where its first scale group's row 0 is (element of scale),
    and for two-level scales (G, n_super, 4 + gps, 32) the byte of its plane's float32 d (else 0)."""
    if scale.ndim == 4:     # two levels: plane (g, super-block of b), its d, then group j's sc
        gps = scale.shape[2] - 4
        plane = (g * scale.shape[1] + b * halves // gps) * scale.shape[2] * ROWS
        return plane, plane + (4 + b * halves % gps) * ROWS
    return 0, (g * ng + b * halves) * ROWS


@njit(cache=True, inline="always")
def row_factors(xd, xqs, t0, tt, b, halves, corr, dv, cv, xsv):
    """Per activation row t0..t0+tt, for block b: dv[t] its scale d, cv[2t + h] the code-shift correction
    corr * sum(x_q) and xsv[2t + h] d * sum(x_q) of each half h (the whole block in h = 0 when halves == 1)."""
    for t in range(tt):
        d = xd[t0 + t, b]
        s0, s1 = xqs[t0 + t, 2 * b], xqs[t0 + t, 2 * b + 1]
        dv[t] = d
        if halves == 1:
            cv[2 * t], cv[2 * t + 1] = corr * (s0 + s1), 0
            xsv[2 * t], xsv[2 * t + 1] = d * np.float32(s0 + s1), np.float32(0.0)
        else:
            cv[2 * t], cv[2 * t + 1] = corr * s0, corr * s1
            xsv[2 * t], xsv[2 * t + 1] = d * np.float32(s0), d * np.float32(s1)


@njit(cache=True, inline="always")
def n_groups(scale):
    """Scale groups a row of a matrix has: scale (G, groups, 32), or two-level (G, n_super, 4 + gps, 32)."""
    if scale.ndim == 4:
        return scale.shape[1] * (scale.shape[2] - 4)
    return scale.shape[1]


if AVAILABLE:
    @njit(cache=True, inline="always")
    def _groups_int8dot(v, lo, q, scale, offset, xq, xd, xqs, out, g0, g1):
        """out (n_rows,) rows of row groups g0..g1-1 = W @ x_hat, serially, W of variant v (lo its code
        shift). scale/offset float32 or float16 bits (G, groups, 32), or two-level int8 (G, n_super,
        4 + groups a super-block, 32)."""
        g_bytes = q.shape[1] * q.shape[2]
        n_rows = out.shape[0]
        acc = np.empty(ROWS, np.float32)
        for g in range(g0, g1):
            rows_v(v, q, g * g_bytes, xq, xd, xqs, scale, offset, g, lo, acc)
            r0 = g * ROWS
            for r in range(min(ROWS, n_rows - r0)):
                out[r0 + r] = acc[r]

    @njit(cache=True, fastmath=True)
    def matvec_int8dot_groups(v, lo, q, scale, offset, xq, xd, xqs, out, g0, g1):
        """Rows of row groups g0..g1-1 of out (n_rows,) = W @ x_hat, x_hat given by quantize_activation,
        serially: one thread's share of a decode product. W of variant v, code shift lo. (A function of
        its own, as matvec_int8dot_q's loop: inlined elsewhere, LLVM contracted the float ops of Q6_K's
        kernel otherwise, last bits that 24 layers of int8 activations carried to 0.07 of a logit.)"""
        _groups_int8dot(v, lo, q, scale, offset, xq, xd, xqs, out, g0, g1)

    @njit(cache=True, parallel=True, fastmath=True)
    def matvec_int8dot_q(v, lo, q, scale, offset, xq, xd, xqs, out):
        """out (n_rows,) = W @ x_hat for W in the int8-dot layout q (G, ..., ...) of variant v, scale/offset
        as in PackedMatrix (offset (G, 0, 32) when none), x_hat given as quantize_activation's outputs."""
        n_grp = q.shape[0]
        n_chunks = min(n_grp, PAR_CHUNKS)
        for c in prange(n_chunks):
            _groups_int8dot(v, lo, q, scale, offset, xq, xd, xqs, out, c * n_grp // n_chunks,
                            (c + 1) * n_grp // n_chunks)

    @njit(cache=True, inline="always")
    def _tile_int8dot(v, lo, g, t0, q, scale, offset, xq, xd, xqs, dv, cv, xsv, acc):
        """acc (TT, 32) = activation rows t0..t0+TT (quantize_rows' outputs) against row group g."""
        nblk = xd.shape[1]
        k_n = xq.shape[1]
        g_bytes = q.shape[1] * q.shape[2]
        b_bytes = g_bytes // nblk
        ng = n_groups(scale)
        halves = ng // nblk
        has_off = offset.shape[1] > 0
        acc[:] = 0.0
        for b in range(nblk):
            row_factors(xd, xqs, t0, TT, b, halves, lo, dv, cv, xsv)
            dat, sat = scale_at(scale, g, b, halves, ng)
            tile_v(v, q, g * g_bytes + b * b_bytes, xq, t0 * k_n + b * BLOCK, k_n, scale, sat, offset, sat, dat,
                   dv, cv, xsv, has_off, acc)

    @njit(cache=True, parallel=True, fastmath=True)
    def matmul_int8dot_q(v, lo, q, scale, offset, xq, xd, xqs, out):
        """out (T, n_rows) = x_hat @ W.T for W in the int8-dot layout of variant v, x_hat given by
        quantize_rows' outputs (T rows): T_CHUNK rows a pass, row groups in parallel, TT rows a tile, the
        rest one by one."""
        n_grp = q.shape[0]
        t_n, n_rows = out.shape
        for c0 in range(0, t_n, T_CHUNK):
            c1 = min(t_n, c0 + T_CHUNK)
            for g in prange(n_grp):
                acc = np.empty((TT, ROWS), np.float32)
                dv, cv, xsv = np.empty(TT, np.float32), np.empty(2 * TT, np.int32), np.empty(2 * TT, np.float32)
                r0 = g * ROWS
                nr = min(ROWS, n_rows - r0)
                t0 = c0
                while t0 + TT <= c1:
                    _tile_int8dot(v, lo, g, t0, q, scale, offset, xq, xd, xqs, dv, cv, xsv, acc)
                    for t in range(TT):
                        for r in range(nr):
                            out[t0 + t, r0 + r] = acc[t, r]
                    t0 += TT
                for t1 in range(t0, c1):
                    _groups_int8dot(v, lo, q, scale, offset, xq[t1], xd[t1], xqs[t1], out[t1], g, g + 1)
else:
    @njit(cache=True)
    def matvec_int8dot_q(v, lo, q, scale, offset, xq, xd, xqs, out):
        raise RuntimeError("the int8-dot kernel needs AVX2")

    @njit(cache=True)
    def matmul_int8dot_q(v, lo, q, scale, offset, xq, xd, xqs, out):
        raise RuntimeError("the int8-dot kernel needs AVX2")

    @njit(cache=True)
    def matvec_int8dot_groups(v, lo, q, scale, offset, xq, xd, xqs, out, g0, g1):
        raise RuntimeError("the int8-dot kernel needs AVX2")


QUANTIZE_SERIAL = 1 << 18   # activations up to this many values are quantized without waking the pool


@njit(cache=True, parallel=True)
def quantize_rows(x, xq, xd, xqs):
    """x float32 (T, K) -> int8 codes xq (T, K), scales xd (T, K/32), sums xqs (T, K/16) per row
    (quantize_activation row by row). Serially up to QUANTIZE_SERIAL values (a short prompt's: ~1 ns a
    value, less than a parallel region's wake-up on these VMs)."""
    if x.shape[0] * x.shape[1] <= QUANTIZE_SERIAL:
        for t in range(x.shape[0]):
            quantize_activation(x[t], xq[t], xd[t], xqs[t])
        return
    for t in prange(x.shape[0]):
        quantize_activation(x[t], xq[t], xd[t], xqs[t])


@njit(cache=True)
def quantized(x):
    """x float32 (T, K) -> (xq int8 (T, K), xd float32 (T, K/32), xqs int32 (T, K/16)), by quantize_rows."""
    t_n, k_n = x.shape
    xq = np.empty((t_n, k_n), np.int8)
    xd = np.empty((t_n, k_n // BLOCK), np.float32)
    xqs = np.empty((t_n, k_n // 16), np.int32)
    quantize_rows(x, xq, xd, xqs)
    return xq, xd, xqs


@njit(cache=True, inline="always")
def _variant_here(kind, scale, offset, n_cols):
    """variant_of for a matrix's arrays, in compiled code (a run-time value)."""
    return variant_of(kind, n_groups(scale) // (n_cols // BLOCK), offset.shape[1] > 0)


@njit(cache=True, inline="always")
def matmul_int8dot_v(v, kind, q, scale, offset, x, out):
    """out (T, n_rows) = x_hat @ W.T, x float32 (T, K) quantized here to int8 per 32 columns; W of kind and
    variant v (a constant where the caller's is: compiled for that variant alone)."""
    mode, lo = kind_mode_lo(kind)
    xq, xd, xqs = quantized(x)
    matmul_int8dot_q(v, lo, q, scale, offset, xq, xd, xqs, out)


@njit(cache=True, inline="always")
def matvec_int8dot_v(v, kind, q, scale, offset, x, out):
    """out (n_rows,) = W @ x_hat, x float32 (K,) quantized here; W as in matmul_int8dot_v."""
    mode, lo = kind_mode_lo(kind)
    k_n = x.shape[0]
    xq = np.empty(k_n, np.int8)
    xd = np.empty(k_n // BLOCK, np.float32)
    xqs = np.empty(k_n // 16, np.int32)
    quantize_activation(x, xq, xd, xqs)
    matvec_int8dot_q(v, lo, q, scale, offset, xq, xd, xqs, out)


@njit(cache=True)
def matmul_int8dot(kind, q, scale, offset, x, out):
    """matmul_int8dot_v for a matrix of any variant (kind from encode_kind): every kernel compiled in."""
    matmul_int8dot_v(_variant_here(kind, scale, offset, x.shape[1]), kind, q, scale, offset, x, out)


@njit(cache=True)
def matvec_int8dot(kind, q, scale, offset, x, out):
    """matvec_int8dot_v for a matrix of any variant (kind from encode_kind): every kernel compiled in."""
    matvec_int8dot_v(_variant_here(kind, scale, offset, x.shape[0]), kind, q, scale, offset, x, out)


@entry_point
@njit(cache=True, parallel=True)
def dequantize_int8dot(kind, q, scale, offset, out):
    """out (n_rows, K) float32 = the weights of a matrix in the int8-dot layout q (G, ..., 32) of `kind`,
    scale/offset as in PackedMatrix (the BLAS prefill path; the same arithmetic as dequantize_packed)."""
    mode, lo = kind_mode_lo(kind)
    n_grp = q.shape[0]
    n_rows, k_n = out.shape
    nblk = k_n // BLOCK
    qf = q.reshape(n_grp, q.shape[1] * q.shape[2])
    b_bytes = qf.shape[1] // nblk
    o_bytes = b_bytes // 4                    # one row octet of a block
    gs = k_n // scale.shape[1]
    has_off = offset.shape[1] > 0
    for g in prange(n_grp):
        for rr in range(min(ROWS, n_rows - g * ROWS)):
            row = out[g * ROWS + rr]
            for b in range(nblk):              # the codes, as floats
                at = b * b_bytes + (rr >> 3) * o_bytes + 4 * (rr & 7)
                k0 = b * BLOCK
                if mode != S8:
                    for v in range(4):
                        for j in range(4):
                            byte = np.int32(qf[g, at + 32 * v + j])
                            u0, u1 = byte & 15, byte >> 4
                            if mode == NIB5:
                                hb = np.int32(qf[g, at + 128 + j]) >> (2 * v)
                                u0 += ((hb & 1) << 4) + lo
                                u1 += ((hb & 2) << 3) + lo
                            elif mode == NIB6:     # code vectors 2v, 2v+1: vector v // 2, bits 4(v % 2)..
                                hb = np.int32(qf[g, at + 128 + 32 * (v >> 1) + j]) >> (4 * (v & 1))
                                u0 += ((hb & 3) << 4) + lo
                                u1 += (((hb >> 2) & 3) << 4) + lo
                            row[k0 + 8 * v + j] = np.float32(u0)
                            row[k0 + 8 * v + 4 + j] = np.float32(u1)
                else:
                    for c in range(8):
                        for j in range(4):
                            u = np.int32(qf[g, at + 32 * c + j])
                            row[k0 + 4 * c + j] = np.float32(u - 256 if u > 127 else u)
            for grp in range(scale.shape[1]):
                sc = scale[g, grp, rr]
                if has_off:
                    of = offset[g, grp, rr]
                    for k in range(grp * gs, (grp + 1) * gs):
                        w = sc * row[k]
                        w += of
                        row[k] = w
                else:
                    for k in range(grp * gs, (grp + 1) * gs):
                        row[k] = sc * row[k]


lean_caches(globals())
