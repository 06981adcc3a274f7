"""Integer dot products of llama.cpp's blocks with 8-bit activations (AVX2), the way llama.cpp multiplies them.

Each token's activations are rounded to int8 in blocks of 32 with one float scale per block (`round_activations`:
scale = max |x| / 127, codes = round(x / scale)), so that a block of a weight row and a block of a token meet as
32 integer products summed exactly, and only that sum is scaled by the two blocks' scales in float. The products
run 32 at a time in one instruction (vpmaddubsw: unsigned 8-bit times signed 8-bit, adjacent pairs summed to 16
bits, then vpmaddwd against ones to 32 bits), where the float kernels (pocketgpt.kernels.products) spend two
multiply-adds and a conversion per weight. LLVM does not find these instructions from a loop written in Python, so
`block_dots` writes the loop over one row's blocks in LLVM's own terms (a numba intrinsic).

What it costs in accuracy: a token's activations carry about 8 bits per block (the relative rounding of a block is
at most 1/254 of its largest value); the perplexity this costs on SmolLM2 is in the README (benchmarks/kernels.py).
ENABLED is whether the kernels use it at first (pocketgpt.kernels.products.int8_dots, set_int8_dots): on a machine
with AVX2, unless POCKETGPT_INT8_DOT=0 is set; without it the float kernels run, which take activations as they
are.

Sums: a 4-bit code (0..15) times an int8 code (|c| <= 127), two to a 16-bit lane: at most 3,810; an 8-bit weight
is split into its magnitude (0..128) and sign, which goes onto the activation: at most 2 x 128 x 127 = 32,512, still
inside vpmaddubsw's saturation bound 32,767. Every block sum is therefore exact.
Legend: B tokens, n input width, R rows, b blocks of 32 (n / 32).
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

HOST_AVX2 = "+avx2" in binding.get_host_cpu_features().flatten().split(",")
ENABLED = HOST_AVX2 and os.environ.get("POCKETGPT_INT8_DOT", "1") != "0"

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
_BYTES16, _BYTES32 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 32)
_WORDS, _INTS, _FLOATS = ir.VectorType(_I16, 16), ir.VectorType(_I32, 8), ir.VectorType(_F32, 8)
_INV127 = np.float32(1.0 / 127.0)
CHAINS = 2  # independent sums per token (even and odd blocks): more measured slower here


@njit(cache=True, fastmath=False, error_model="numpy")
def round_activations(x, xq, scale, sums):
    """Tokens x (B, n) -> xq (B, n) int8 codes, scale (B, b) and sums (B, b): each block's scale times the sum of its
    codes (what the block's codes add up to in float, for a weight format's offsets). Without fastmath: the
    rounding is NumPy's (pocketgpt.kernels.reference.int8_activations gives the same codes bit for bit)."""
    B, n = x.shape
    for t in range(B):
        for blk in range(n // 32):
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[t, 32 * blk + j]))
            d = amax * _INV127
            inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
            total = 0
            for j in range(32):
                c = np.int32(np.rint(x[t, 32 * blk + j] * inv))
                xq[t, 32 * blk + j] = c
                total += c
            scale[t, blk] = d
            sums[t, blk] = d * np.float32(total)


def _broadcast(builder, value):
    lanes = builder.insert_element(ir.Constant(_FLOATS, ir.Undefined), value, ir.Constant(_I32, 0))
    first = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
    return builder.shuffle_vector(lanes, ir.Constant(_FLOATS, ir.Undefined), first)


def _row_pointer(builder, array, row, element):
    """A pointer to row `row` of a 2D array struct (rows at its first stride, elements contiguous)."""
    stride = cgutils.unpack_tuple(builder, array.strides, 2)[0]
    start = builder.gep(builder.bitcast(array.data, _I8.as_pointer()), [builder.mul(row, stride)])
    return builder.bitcast(start, element.as_pointer())


def block_dots(tokens: int, kind: str):
    """An intrinsic dots(q, d, m, xq, xd, xs, r, t) -> `tokens` float32 products of row r of a `kind` matrix
    ("q4_0", "q4_1" or "q8_0": codes q, block scales d, Q4_1's block minimums m) with tokens t .. t + tokens - 1 of
    xq (B, n) int8, block scales xd and block sums xs (B, b) (round_activations). Q4_0 and Q4_1 codes are nibbles
    0..15 of blocks of 32 (R, n / 2), byte j of a block holding weights j (low) and j + 16 (high); their offsets
    (w = d (u - 8), w = d u + m) reach the product through the token's block sums: -8 sum_k d_k xs_k and
    sum_k m_k xs_k. Q8_0's codes are int8 (R, n); m and xs are then not read (pass d and xd). The blocks are summed
    in two chains of eight lanes (even and odd blocks), the offsets in two scalar chains alike, each in a fixed
    order that is the same for every token: a token's product does not depend on how many tokens share the pass, so
    that verifying a speculative block gives a decode step's logits bit for bit."""
    nibbles, offset = kind != "q8_0", {"q4_0": "eight", "q4_1": "minimum", "q8_0": None}[kind]

    @intrinsic
    def dots(typingctx, q, d, m, xq, xd, xs, r, t):
        for name, a, dtype in (("q", q, types.uint8 if nibbles else types.int8), ("d", d, types.float32),
                               ("m", m, types.float32), ("xq", xq, types.int8), ("xd", xd, types.float32),
                               ("xs", xs, types.float32)):
            if not isinstance(a, types.Array) or a.ndim != 2 or a.dtype != dtype or a.layout not in "CA":
                raise TypingError(f"block_dots: {name} must be a 2D {dtype} array")
        return types.UniTuple(types.float32, tokens)(q, d, m, xq, xd, xs, r, t), codegen

    def codegen(context, builder, signature, args):
        q, d, m, xq, xd, xs = (context.make_array(ty)(context, builder, v)
                               for ty, v in zip(signature.args[:6], args[:6]))
        r, t = args[6], args[7]
        module = builder.module
        maddubs = cgutils.get_or_insert_function(module, ir.FunctionType(_WORDS, [_BYTES32, _BYTES32]),
                                                 "llvm.x86.avx2.pmadd.ub.sw")
        maddwd = cgutils.get_or_insert_function(module, ir.FunctionType(_INTS, [_WORDS, _WORDS]),
                                                "llvm.x86.avx2.pmadd.wd")
        fma = cgutils.get_or_insert_function(module, ir.FunctionType(_FLOATS, [_FLOATS] * 3), "llvm.fma.v8f32")
        psign = cgutils.get_or_insert_function(module, ir.FunctionType(_BYTES32, [_BYTES32, _BYTES32]),
                                               "llvm.x86.avx2.psign.b")
        absb = cgutils.get_or_insert_function(module, ir.FunctionType(_BYTES32, [_BYTES32, ir.IntType(1)]),
                                              "llvm.abs.v32i8")
        blocks = cgutils.unpack_tuple(builder, d.shape, 2)[1]
        qrow, drow, mrow = _row_pointer(builder, q, r, _I8), _row_pointer(builder, d, r, _F32), _row_pointer(
            builder, m, r, _F32)
        rows = [builder.add(t, ir.Constant(t.type, i)) for i in range(tokens)]
        xrows = [_row_pointer(builder, xq, row, _I8) for row in rows]
        drows = [_row_pointer(builder, xd, row, _F32) for row in rows]
        srows = [_row_pointer(builder, xs, row, _F32) for row in rows]
        zero = ir.Constant(_FLOATS, [0.0] * 8)
        chains = [[cgutils.alloca_once_value(builder, zero) for _ in range(CHAINS)] for _ in range(tokens)]
        offsets = [[cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(CHAINS)]
                   for _ in range(tokens)]
        ones = ir.Constant(_WORDS, [1] * 16)
        low, four = ir.Constant(_BYTES16, [15] * 16), ir.Constant(_BYTES16, [4] * 16)
        concat = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))

        def block(k, chain):
            """Block k of the row met by every token, into chain `chain` of each."""
            if nibbles:
                packed = builder.load(builder.bitcast(builder.gep(qrow, [builder.mul(k, ir.Constant(k.type, 16))]),
                                                      _BYTES16.as_pointer()), align=1)
                codes = builder.shuffle_vector(builder.and_(packed, low), builder.lshr(packed, four), concat)
            else:
                signed = builder.load(builder.bitcast(builder.gep(qrow, [builder.mul(k, ir.Constant(k.type, 32))]),
                                                      _BYTES32.as_pointer()), align=1)
                codes = builder.call(absb, [signed, ir.Constant(ir.IntType(1), 0)])  # -128 stays 0x80: 128 unsigned
            scale = builder.load(builder.gep(drow, [k]))
            if offset == "minimum":
                weight = builder.load(builder.gep(mrow, [k]))
            elif offset == "eight":
                weight = builder.fmul(ir.Constant(_F32, -8.0), scale)
            for i in range(tokens):
                x = builder.load(builder.bitcast(builder.gep(xrows[i], [builder.mul(k, ir.Constant(k.type, 32))]),
                                                 _BYTES32.as_pointer()), align=1)
                if offset is None:
                    x = builder.call(psign, [x, signed])
                sums = builder.sitofp(builder.call(maddwd, [builder.call(maddubs, [codes, x]), ones]), _FLOATS)
                both = _broadcast(builder, builder.fmul(scale, builder.load(builder.gep(drows[i], [k]))))
                builder.store(builder.call(fma, [sums, both, builder.load(chains[i][chain])]), chains[i][chain])
                if offset is not None:
                    term = builder.fmul(weight, builder.load(builder.gep(srows[i], [k])))
                    builder.store(builder.fadd(builder.load(offsets[i][chain]), term), offsets[i][chain])

        width = ir.Constant(blocks.type, CHAINS)
        groups = builder.udiv(blocks, width)
        with cgutils.for_range(builder, groups) as loop:
            first = builder.mul(loop.index, width)
            for c in range(CHAINS):
                block(builder.add(first, ir.Constant(blocks.type, c)), c)
        done = builder.mul(groups, width)
        for c in range(CHAINS - 1):  # the blocks left over, into the chains in order
            k = builder.add(done, ir.Constant(blocks.type, c))
            with builder.if_then(builder.icmp_unsigned("<", k, blocks)):
                block(k, c)
        out = []
        for i in range(tokens):
            lanes = builder.load(chains[i][0])
            for c in range(1, CHAINS):
                lanes = builder.fadd(lanes, builder.load(chains[i][c]))
            total = builder.extract_element(lanes, ir.Constant(_I32, 0))
            for lane in range(1, 8):
                total = builder.fadd(total, builder.extract_element(lanes, ir.Constant(_I32, lane)))
            if offset is not None:
                for c in range(CHAINS):
                    total = builder.fadd(total, builder.load(offsets[i][c]))
            out.append(total)
        return context.make_tuple(builder, signature.return_type, out)

    return dots


q4_0_dots1, q4_0_dots2, q4_0_dots4 = (block_dots(n, "q4_0") for n in (1, 2, 4))
q4_1_dots1, q4_1_dots2, q4_1_dots4 = (block_dots(n, "q4_1") for n in (1, 2, 4))
q8_0_dots1, q8_0_dots2, q8_0_dots4 = (block_dots(n, "q8_0") for n in (1, 2, 4))
