"""Integer dot products over weight rows interleaved sixteen to a group (pocketgpt.formats.interleaved): how every
integer weight format (llama.cpp's blocks, the K-quants, MXFP4, pocketgpt's 2-, 3-, 4- and 8-bit groups) multiplies
tokens on a machine with AVX2, whatever the number of tokens, the way llama.cpp's repacked kernels do. Not here:
float weights, Q6_K and groups that do not cut rows into blocks of 32 (they keep the float kernels of
pocketgpt.kernels.products).

Each token's activations are rounded to int8 in blocks of 32 with one float scale per block (`round_activations`,
as llama.cpp rounds them). A group's 16 rows then meet one token's block as 16 exact integer sums computed together:
one 512-bit `vpdpbusd` multiplies four codes of each of the 16 rows by the same four activation codes and adds them
into the row's own 32-bit lane, so a block takes eight instructions for 16 rows and no lane ever needs summing
across. Only then is each row's sum scaled, in float, by its block scale times the token's. Without AVX-512 VNNI
the same sums are vpmaddubsw pairs (8-bit codes split in two nibbles, whose products would overflow its 16-bit
sums).

Token t's product with row r is y = sum_k (d_rk xd_tk) P_rtk + sum_k o_rk xs_tk, P the block's exact integer sum,
xd the token's block scale and xs its block scale times the sum of its codes; o_rk is m, -d z or -d o (the layout's
offset). With a scale per half block (Q6_K) each half's sum and offset take their own d and the half's code sum.
Each of the two sums runs over the blocks in order in its own float32 lane, and y is their sum: a token's result
does not depend on how many tokens share the pass, so a speculative verification gives each token its decode step's
logits bit for bit. The kernels are compiled without fastmath (numba would put its flags on the
intrinsic's arithmetic too).
Legend: B tokens, n input width, R rows, b blocks of 32 (n / 32), G groups of 16 rows.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import binding, ir
from numba import literally, njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from pocketgpt.formats.interleaved import LANES, MINIMUM, MXFP4_TABLE, ZERO, fields, quads

_FEATURES = set(binding.get_host_cpu_features().flatten().split(","))
HOST_AVX2 = "+avx2" in _FEATURES
HOST_VNNI = {"+avx512f", "+avx512bw", "+avx512vnni"} <= _FEATURES  # vpdpbusd on 512 bits
ENABLED = HOST_AVX2 and os.environ.get("POCKETGPT_INT8_DOT", "1") != "0"

TILE = 4  # tokens a tile of the product meets per pass over a group's blocks (then 2, then 1)
SWEEP = 256  # tokens whose activations a pass over the groups reads (they stay in a core's L2 cache)
EXACT = {"cache": True, "fastmath": False, "error_model": "numpy"}
_INV127 = np.float32(1.0 / 127.0)


# ----------------------------------------------------------------------------- activations


@njit(**EXACT)
def round_activations(x, xq, scale, sums, halves):
    """Tokens x (B, n) -> xq (B, n) int8 codes, scale (B, b), sums (B, b): each block's scale times the sum of its
    codes, and halves (B, 2 b): the same of each half block of 16 (for scales per 16 weights). The rounding is
    NumPy's (pocketgpt.kernels.reference.int8_activations gives the same codes bit for bit): scale = max |x| / 127,
    codes = round(x / scale)."""
    B, n = x.shape
    for t in range(B):
        for blk in range(n // 32):
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[t, 32 * blk + j]))
            d = amax * _INV127
            inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
            low = high = 0
            for j in range(32):
                c = np.int32(np.rint(x[t, 32 * blk + j] * inv))
                xq[t, 32 * blk + j] = c
                if j < 16:
                    low += c
                else:
                    high += c
            scale[t, blk] = d
            sums[t, blk] = d * np.float32(low + high)
            halves[t, 2 * blk], halves[t, 2 * blk + 1] = d * np.float32(low), d * np.float32(high)


@njit(**EXACT)
def quantized(x):
    """Tokens x (B, n) float32 -> (xq, xd, xs, xh) as round_activations fills them."""
    B, n = x.shape
    xq = np.empty((B, n), np.int8)
    xd, xs = np.empty((B, n // 32), np.float32), np.empty((B, n // 32), np.float32)
    xh = np.empty((B, n // 16), np.float32)
    round_activations(x, xq, xd, xs, xh)
    return xq, xd, xs, xh


# ----------------------------------------------------------------------------- the tile of tokens (LLVM IR)

_I8, _I16, _I32, _F32, _F16 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType(), ir.HalfType()
_BYTES, _INTS, _FLOATS = ir.VectorType(_I8, 4 * LANES), ir.VectorType(_I32, LANES), ir.VectorType(_F32, LANES)
_HALF_BYTES, _WORDS, _HALF_INTS = ir.VectorType(_I8, 2 * LANES), ir.VectorType(_I16, LANES), ir.VectorType(_I32, 8)


def _splat(value, vector_type):
    return ir.Constant(vector_type, [value] * vector_type.count)


def _broadcast(builder, value, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_I32, 0))
    lanes = ir.VectorType(_I32, vector_type.count)
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), _splat(0, lanes))


def _load(builder, base, offset, element, vector=None, align=1):
    """The element (or vector of elements) at element offset `offset` of a data pointer."""
    p = builder.gep(builder.bitcast(base, element.as_pointer()), [offset])
    return builder.load(builder.bitcast(p, vector.as_pointer()) if vector else p, align=align)


class _Emitter:
    """The host's instructions for the products of unsigned codes with int8 activation codes, four to a lane."""

    def __init__(self, builder, wide_codes: bool):
        self.b, self.wide = builder, wide_codes  # wide: codes may pass 127 (vpmaddubsw would saturate)
        module = builder.module
        fn = cgutils.get_or_insert_function
        if HOST_VNNI:
            self.vnni = fn(module, ir.FunctionType(_INTS, [_INTS] * 3), "llvm.x86.avx512.vpdpbusd.512")
            self.shuffle = fn(module, ir.FunctionType(_BYTES, [_BYTES] * 2), "llvm.x86.avx512.pshuf.b.512")
        else:
            self.maddubs = fn(module, ir.FunctionType(_WORDS, [_HALF_BYTES] * 2), "llvm.x86.avx2.pmadd.ub.sw")
            self.maddwd = fn(module, ir.FunctionType(_HALF_INTS, [_WORDS] * 2), "llvm.x86.avx2.pmadd.wd")
            self.shuffle = fn(module, ir.FunctionType(_HALF_BYTES, [_HALF_BYTES] * 2), "llvm.x86.avx2.pshuf.b")

    def _halves(self, v):
        b = self.b
        v = b.bitcast(v, _BYTES)
        return [b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 2 * LANES), list(range(h, h + 2 * LANES))))
                for h in (0, 2 * LANES)]

    def _join(self, lo, hi, count):
        return self.b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 2 * count), list(range(2 * count))))

    def dot(self, acc, codes, x):
        """acc (16 x i32) + per lane the four products of unsigned codes (64 x i8) by signed x (64 x i8)."""
        b = self.b
        if HOST_VNNI:
            return b.call(self.vnni, [acc, b.bitcast(codes, _INTS), b.bitcast(x, _INTS)])
        sums = []
        for c, a in zip(self._halves(codes), self._halves(x)):
            if self.wide:  # 16 hi + lo, each product then within vpmaddubsw's 16-bit range
                hi, lo = b.lshr(c, _splat(4, _HALF_BYTES)), b.and_(c, _splat(15, _HALF_BYTES))
                pairs = [b.call(self.maddubs, [hi, a]), b.call(self.maddubs, [lo, a])]
                sums.append(b.add(b.call(self.maddwd, [pairs[0], _splat(16, _WORDS)]),
                                  b.call(self.maddwd, [pairs[1], _splat(1, _WORDS)])))
            else:
                sums.append(b.call(self.maddwd, [b.call(self.maddubs, [c, a]), _splat(1, _WORDS)]))
        return b.add(acc, self._join(sums[0], sums[1], 8))

    def lookup(self, table, codes):
        """Bytes codes (0..15) replaced by table[code] (16 entries)."""
        b = self.b
        if HOST_VNNI:
            return b.call(self.shuffle, [ir.Constant(_BYTES, [int(v) for v in table] * 4), codes])
        row = ir.Constant(_HALF_BYTES, [int(v) for v in table] * 2)
        lo, hi = (b.call(self.shuffle, [row, h]) for h in self._halves(codes))
        return self._join(lo, hi, 2 * LANES)


def _floats(builder, v, dtype):
    """A loaded vector of 16 scales as float32: float16 bits widened exactly, or float32 as they are."""
    return builder.fpext(builder.bitcast(v, ir.VectorType(_F16, LANES)), _FLOATS) if dtype == types.uint16 else v


def _tile(T: int, code: int):
    """codegen of y[t .. t + T - 1, 16 g .. 16 g + 15] for layout `code` (see the module docstring)."""
    bits, top, table, offset, halves = fields(code)
    Q = quads(code)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(ty)(context, builder, v) for ty, v in zip(signature.args[:8], args[:8])]
        q, d, m, xq, xd, xs, xh, y = arrays
        d_type, m_type = signature.args[1].dtype, signature.args[2].dtype
        g, t = args[8], args[9]
        i64 = g.type
        C = lambda v: ir.Constant(i64, v)  # noqa: E731
        blocks = cgutils.unpack_tuple(builder, q.shape, 3)[1]
        n = cgutils.unpack_tuple(builder, xq.shape, 2)[1]
        R = cgutils.unpack_tuple(builder, y.shape, 2)[1]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_FLOATS, [_FLOATS] * 3),
                                             "llvm.fma.v16f32")
        emit = _Emitter(builder, wide_codes=bits == 8)
        zeros = _splat(0.0, _FLOATS)
        acc = [cgutils.alloca_once_value(builder, zeros) for _ in range(T)]
        off = [cgutils.alloca_once_value(builder, zeros) for _ in range(T)]
        scale_type = _I16 if d_type == types.uint16 else _F32
        with cgutils.for_range(builder, blocks) as loop:
            k = loop.index
            at = builder.add(builder.mul(g, blocks), k)  # (g, k): the block's place in codes and scales
            raw = [_load(builder, q.data, builder.add(builder.mul(at, C(64 * Q)), C(64 * j)), _I8, _BYTES)
                   for j in range(Q)]
            sides = 2 if halves else 1  # scales per block: of each half (Q6_K) or of the whole
            dv = [_floats(builder, _load(builder, d.data, builder.mul(builder.add(builder.mul(at, C(sides)), C(h)),
                                                                        C(LANES)),
                                         scale_type, ir.VectorType(scale_type, LANES), 2), d_type)
                  for h in range(sides)]
            if offset == MINIMUM:
                m_elem = _I16 if m_type == types.uint16 else _F32
                ov = [_floats(builder, _load(builder, m.data, builder.mul(at, C(LANES)), m_elem,
                                             ir.VectorType(m_elem, LANES), 2), m_type)]
            elif offset == ZERO:  # -d z
                z = _load(builder, m.data, builder.mul(at, C(LANES)), _I8, ir.VectorType(_I8, LANES))
                ov = [builder.fneg(builder.fmul(dv[0], builder.uitofp(z, _FLOATS)))]
            else:
                ov = [builder.fmul(dh, _splat(-float(offset), _FLOATS)) for dh in dv]
            vectors = _unpack(builder, emit, raw, bits, top, table)
            for i in range(T):
                tok = builder.add(t, C(i))
                first = builder.add(builder.mul(tok, n), builder.mul(k, C(32)))
                chains = [_splat(0, _INTS), _splat(0, _INTS)]  # codes 0..15 and 16..31 of the block
                for v in range(8):  # the token's codes 4 v .. 4 v + 3 as one i32, in every lane
                    x4 = _broadcast(builder, _load(builder, xq.data, builder.add(first, C(4 * v)), _I8, _I32), _INTS)
                    chains[v // 4] = emit.dot(chains[v // 4], vectors[v], builder.bitcast(x4, _BYTES))
                block = builder.add(builder.mul(tok, blocks), k)
                token_scale = _broadcast(builder, _load(builder, xd.data, block, _F32), _FLOATS)
                if halves:  # each half's sum by its own scale, its offset by the half's code sum
                    for h in range(2):
                        total = builder.sitofp(chains[h], _FLOATS)
                        scale = builder.fmul(dv[h], token_scale)
                        builder.store(builder.call(fma, [total, scale, builder.load(acc[i])]), acc[i])
                        half = builder.add(builder.mul(block, C(2)), C(h))
                        sums = _broadcast(builder, _load(builder, xh.data, half, _F32), _FLOATS)
                        builder.store(builder.call(fma, [ov[h], sums, builder.load(off[i])]), off[i])
                else:
                    total = builder.sitofp(builder.add(chains[0], chains[1]), _FLOATS)
                    scale = builder.fmul(dv[0], token_scale)
                    builder.store(builder.call(fma, [total, scale, builder.load(acc[i])]), acc[i])
                    sums = _broadcast(builder, _load(builder, xs.data, block, _F32), _FLOATS)
                    builder.store(builder.call(fma, [ov[0], sums, builder.load(off[i])]), off[i])
        left = builder.sub(R, builder.mul(g, C(LANES)))  # rows of this group that exist
        for i in range(T):
            out = builder.fadd(builder.load(acc[i]), builder.load(off[i]))
            start = builder.add(builder.mul(builder.add(t, C(i)), R), builder.mul(g, C(LANES)))
            base = builder.gep(builder.bitcast(y.data, _F32.as_pointer()), [start])
            with builder.if_else(builder.icmp_signed(">=", left, C(LANES))) as (whole, part):
                with whole:
                    builder.store(out, builder.bitcast(base, _FLOATS.as_pointer()), align=4)
                with part:
                    with cgutils.for_range(builder, left) as lane:
                        value = builder.extract_element(out, builder.trunc(lane.index, _I32))
                        builder.store(value, builder.gep(base, [lane.index]))
        return context.get_dummy_value()

    return codegen


def _unpack(builder, emit: _Emitter, raw: list, bits: int, top: bool, table: bool) -> list:
    """The quads of a block -> the eight vectors of unsigned codes: vector v holds codes 4 v .. 4 v + 3 of each lane."""
    b = builder
    if bits == 8:
        vectors = list(raw)
    elif bits == 4:
        low = [b.and_(r, _splat(15, _BYTES)) for r in raw[:4]]
        vectors = low + [b.lshr(r, _splat(4, _BYTES)) for r in raw[:4]]
    else:
        vectors = [b.and_(b.lshr(raw[v % 2], _splat(2 * (v // 2), _BYTES)), _splat(3, _BYTES)) for v in range(8)]
    if top:
        word = raw[-1]
        vectors = [b.or_(vec, b.shl(b.and_(b.lshr(word, _splat(v, _BYTES)), _splat(1, _BYTES)), _splat(bits, _BYTES)))
                   for v, vec in enumerate(vectors)]
    if table:
        vectors = [emit.lookup(MXFP4_TABLE, vec) for vec in vectors]
    return vectors


@intrinsic
def tile(typingctx, q, d, m, xq, xd, xs, xh, y, g, t, tokens, code):
    """y[t .. t + tokens - 1, 16 g .. 16 g + 15] (rows past R left alone) of a layout `code` matrix (q, d, m) with
    tokens xq, xd, xs, xh (round_activations); tokens and code must be compile-time constants."""
    if not isinstance(tokens, types.IntegerLiteral) or not isinstance(code, types.IntegerLiteral):
        return None
    wanted = (("q", q, (types.uint8,), 3), ("d", d, (types.uint16, types.float32), 3),
              ("xq", xq, (types.int8,), 2), ("xd", xd, (types.float32,), 2), ("xs", xs, (types.float32,), 2),
              ("xh", xh, (types.float32,), 2), ("y", y, (types.float32,), 2))
    for name, a, dtypes, ndim in wanted:
        if not isinstance(a, types.Array) or a.ndim != ndim or a.dtype not in dtypes or a.layout != "C":
            raise TypingError(f"interleaved.tile: {name} must be a C-contiguous {ndim}D array of {dtypes}")
    if not isinstance(m, types.Array) or m.layout != "C":
        raise TypingError("interleaved.tile: m must be a C-contiguous array")
    return (types.void(q, d, m, xq, xd, xs, xh, y, g, t, tokens, code),
            _tile(tokens.literal_value, code.literal_value))


# ----------------------------------------------------------------------------- kernels


@njit(cache=True, fastmath=False, error_model="numpy", parallel=True)
def product(parts, xq, xd, xs, xh, y, code):
    """y (B, R) = the tokens (xq, xd, xs, xh) times the layout's matrix parts (codes, scale, offset, ...): in sweeps of
    SWEEP tokens, each group of 16 rows (in parallel) meets them TILE at a time, then two, then one."""
    literally(code)
    q, d, m = parts[0], parts[1], parts[2]
    B = xq.shape[0]
    for t0 in range(0, B, SWEEP):
        t1 = min(B, t0 + SWEEP)
        for g in prange(q.shape[0]):
            t = t0
            while t + TILE <= t1:
                tile(q, d, m, xq, xd, xs, xh, y, g, t, TILE, code)
                t += TILE
            if t + 2 <= t1:
                tile(q, d, m, xq, xd, xs, xh, y, g, t, 2, code)
                t += 2
            if t < t1:
                tile(q, d, m, xq, xd, xs, xh, y, g, t, 1, code)


@njit(cache=True, fastmath=False, error_model="numpy")
def linear(parts, x, y, code):
    """y (B, R) = x (B, n) W^T, the tokens rounded to 8 bits first (round_activations); for compiled callers, whose
    `code` is a compile-time constant (from Python, linear_for)."""
    literally(code)
    xq, xd, xs, xh = quantized(x)
    product(parts, xq, xd, xs, xh, y, code)


def linear_for(code: int):
    """linear(parts, x, y) of layout `code`, compiled for it: a Python caller reaches the kernel without numba's
    literal dispatch, which would type the call afresh every time (milliseconds). A closure over an integer, which
    numba's disk cache recognises in the next process."""

    @njit(cache=True, fastmath=False, error_model="numpy")
    def linear_code(parts, x, y):
        xq, xd, xs, xh = quantized(x)
        product(parts, xq, xd, xs, xh, y, code)

    return linear_code


@njit(cache=True, fastmath=False, error_model="numpy")
def matvec(parts, x, y, code):
    """y (R,) = W x (n,): linear() of one token."""
    literally(code)
    linear(parts, x.reshape(1, x.size), y.reshape(1, y.size), code)
