"""Block-wise 8-bit codec for optimizer states: the dynamic (tree) quantization maps, an exact
nearest-code encoder without table lookups, and block-wise (de)quantization into given buffers.

Method: Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR
2022, arXiv 2110.02861 (the dynamic type itself: Dettmers, "8-Bit Approximations for Parallelism in
Deep Learning", arXiv 1511.04561). Reference implementations: bitsandbytes
(github.com/bitsandbytes-foundation/bitsandbytes, ``functional.create_dynamic_map``,
``quantize_blockwise``) and torchao (github.com/pytorch/ao, ``torchao/optim/quant_utils.py``,
``subclass_8bit.py``).

**Blocks.** A state is cut into blocks of :data:`BLOCK` = 256 contiguous elements (both references;
the paper used 2048); the last block may be shorter. Each block stores its absmax ``max |x|`` in
fp32 and each element one uint8 code: the index of the map value nearest to ``x / absmax``.
Decoding is ``map[code] * absmax`` (one fp32 multiplication).

**The maps** (256 sorted float32 values each; codes are indices into the sorted map). A value's
magnitude index ``q`` (signed map: ``q = |code - 127|``, 7 bits; unsigned map: ``q = code + 1``, 8
bits: the sign bit becomes one more fraction bit) is read as a dynamic-exponent number: the number
``z`` of zero bits above its leading 1 is the exponent, the leading 1 is the indicator bit, and the
``e`` bits below it are a linear fraction ``k``. Its value is ``10^-z * (0.1 + 0.9 (k + 1/2) / 2^e)``:
the midpoint of part ``k`` when ``[0.1, 1]`` is cut into ``n = 2^e`` equal parts, scaled into the
decade ``[10^-z-1, 10^-z]``. Signed map: decades ``10^-6 .. 10^0`` hold 1, 2, ..., 64 positive values
(127 in all), mirrored to 127 negative ones, plus 0 (code 127) and 1.0 (code 255): range
``[-0.99297, 1]``, no -1. Unsigned map: the same decades hold 2, 4, ..., 128 values (254), plus 0
(code 0) and 1.0 (code 255). In float32, exactly as the references round them: the boundaries are
``b_j = fl(0.1f + j * 0.9f/n)`` for ``j < n/2`` and ``fl(1 - (n - j) * 0.9f/n)`` above (one rounding
each, ``0.1f = fl32(0.1)``, ``0.9f = fl32(1 - 0.1f)``), the part means ``fl((b_k + b_k+1) / 2)``, the
values ``fl(fl(10^-z) * mean)``. Checked value for value (``torch.equal``) against bitsandbytes
0.50.2 ``create_dynamic_map(signed)`` and torchao 0.18 ``create_dynamic_map``, both maps, on an x86
CPU with AVX2; the test pins a digest of the values. The references build their boundaries with
``torch.linspace(dtype=float32)``, whose rounding depends on the CPU kernel: run with
``ATEN_CPU_CAPABILITY=default``, bitsandbytes' maps differ from these in 42 (signed) and 31
(unsigned) values by an ulp or so. Ours are fixed.

**Encoding** is exact: the code of the map value nearest to ``y = x / absmax`` (fp32 division), ties
(``y`` exactly at the midpoint of two neighbouring values) to the value of larger magnitude, so
``code(-y)`` mirrors ``code(y)``. ``y`` beyond the map's ends takes the end codes; on the unsigned
map a negative ``y`` takes code 0 (value 0, its nearest); NaN takes the zero code.

* :func:`encode_reference`: ``searchsorted`` of ``y`` (as float64) in the 255 exact midpoints of
  neighbouring values (float64 holds the midpoint of two float32 exactly).
* :func:`encode` (fast): elementwise ops only, no table lookups and no ``log``/``exp``, so Inductor
  vectorizes it on CPU (a table lookup compiles to a scalar gather per element). Eight comparisons of
  ``|y|`` with float32 constants (the exact thresholds between zero, the seven decades and 1.0) pick
  the decade, and chains of selects its constants; ``floor(n (|y| / (0.9 s) - 1/9) - 1/2)`` (``s``
  the decade's scale, ``n`` its number of parts) is a candidate ``k``, the nearest value's index or
  one below it (in these units the true thresholds lie within 1e-5 of the integers, so the rounding
  of this float32 arithmetic does not matter). Then the two map values around the candidate's upper
  threshold are rebuilt bit for bit: every boundary is one of the finest grid's (``[0.1, 1]`` in 128
  parts), ``b_J = fl32(N_J) * 2^-30`` with an integer ``N_J < 2^30`` computed exactly in int32
  (the int-to-float cast is the one rounding), then ``v = fl(fl(10^-z) 2^-31 * fl(N_J + N_J'))``.
  Last, ``|y| - v_k >= v_k+1 - |y|`` in float32 decides: both differences are exact (Sterbenz)
  wherever rounding could make them tie, so this is ``2|y| >= v_k + v_k+1`` exactly. A
  ``clamp_max(1)`` (changing no value) between each product and the subtraction keeps a compiler from
  fusing them into an FMA, which would skip the product's rounding. Checked against
  :func:`encode_reference` code for code in the tests, and once over every float32 from 0 to 2, both
  maps, both signs (2^30 values each; compiled), with no difference.

**Decoding**: :func:`decode` computes ``map[code]`` arithmetically the same way (comparisons of ``q``
with powers of two for the decade, the fraction ``k = q - 2^e``); :func:`decode_reference` is the
256-entry gather. Both give the map's values bit for bit (tested on all 256 codes).

**Eager and compiled.** Run eagerly, :func:`quantize_blockwise` and :func:`dequantize_blockwise` use
the table codecs (``searchsorted``, the gather: a few fast ATen kernels, where the arithmetic codecs
would be dozens); traced by ``torch.compile`` they use the lookup-free ones, which Inductor fuses into
one vectorized loop. The two give the same codes and values.

**Special blocks.** An all-zero block stores absmax 0 and the zero code everywhere and decodes to
exact zeros. A block holding ±inf (a second moment of gradients of 1e20 and more overflows float32)
stores absmax inf; its infinities take the end codes (1.0, and the signed map's most negative
value) and decode to ±inf exactly, its finite elements the zero code and decode to 0 (a per-block
scale of inf keeps nothing of them). So an infinite second moment zeroes its coordinate's update,
as in fp32, instead of turning the parameter to NaN. A block holding a NaN stores absmax NaN and
decodes to NaN in all of its elements and in no other block.

**For the integrator.** Per chunk: :func:`dequantize_blockwise` into a reused fp32 scratch
(``out=``), the unchanged fp32 update on it, :func:`quantize_blockwise` back (``out=(codes,
absmax)``). A chunk must start at a block boundary (element offset a multiple of :data:`BLOCK`,
absmax offset ``offset // BLOCK``); only the state's last chunk may end in a partial block. Every
function is traceable by ``torch.compile`` (no data-dependent Python branches, no device syncs);
even an eager optimizer step will want the codec compiled (see ``benchmarks/codec.py``). Tensors with fewer than :data:`MIN_QUANTIZED_NUMEL` elements keep fp32 states
(both references): the threshold applies to a parameter's global size, never to the size of an
FSDP2 shard (bitsandbytes#2080 and pytorch/ao#4912 are bugs from checking the local shard).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BLOCK",
    "MIN_QUANTIZED_NUMEL",
    "decode",
    "decode_reference",
    "dequantize_blockwise",
    "dynamic_map",
    "encode",
    "encode_reference",
    "map_digest",
    "num_blocks",
    "quantize_blockwise",
]

#: elements per block, each block with its own fp32 absmax
BLOCK = 256
#: a parameter with fewer elements (its global size, never an FSDP2 shard's) keeps fp32 states
MIN_QUANTIZED_NUMEL = 4096

_DECADES = 7


def _f32(x: float) -> float:
    """``x`` rounded to float32 (to nearest, ties to even)."""
    return float(np.float32(x))


def _f32_up(x: float) -> float:
    """The smallest float32 at or above ``x``."""
    f = np.float32(x)
    return float(f) if float(f) >= x else float(np.nextafter(f, np.float32(np.inf)))


_LOW = _f32(0.1)  # 0.1f
_WIDTH = _f32(1.0 - _LOW)  # 0.9f
# Every boundary of every decade is a boundary of the finest grid, [0.1, 1] in 128 parts:
# boundary J = fl32(N_J * 2^-30) with the integer N_J = J * 7549747 + 107374184 for J < 64 (counting
# up from 0.1f) and J * 7549747 + 107374208 above (counting down from 1: 1 - (128 - J) * 0.9f / 128).
_N_STEP = int(_WIDTH * 2**23)  # 0.9f / 128 in units of 2^-30
_N_LOW = int(_LOW * 2**30)  # 0.1f
_N_HIGH = 2**30 - 128 * _N_STEP  # 1 - 0.9f
assert _N_STEP == _WIDTH * 2**23 and _N_LOW == _LOW * 2**30 and _N_HIGH == (1 - _WIDTH) * 2**30
_FINEST = 128


def _boundary_units(J: int) -> float:
    """Boundary ``J`` of the finest grid in units of 2^-30, rounded to float32 (an integer < 2^30)."""
    return _f32(J * _N_STEP + (_N_LOW if J < _FINEST // 2 else _N_HIGH))


@dataclass(frozen=True)
class _Map:
    values: torch.Tensor  # (256,) float32, sorted
    midpoints: torch.Tensor  # (255,) float64, exact
    zero_code: int
    parts: tuple[int, ...]  # n per decade
    scales: tuple[float, ...]  # fl32(10^(d-6)) * 2^-31 per decade (2^-30: units; 1/2: the mean)
    base: int  # a decade's first code less its number of values n (the same for every decade)
    cuts: tuple[float, ...]  # 8 float32 thresholds on |y|: zero | decade 0 | ... | decade 6 | 1.0


def _build(signed: bool) -> _Map:
    parts = tuple(2**d if signed else 2 ** (d + 1) for d in range(_DECADES))
    scales = tuple(_f32(10.0 ** (d - 6)) * 2.0**-31 for d in range(_DECADES))
    positive: list[float] = []
    for n, s in zip(parts, scales, strict=True):
        stride = _FINEST // n
        for k in range(n):
            mean = _f32(_boundary_units(k * stride) + _boundary_units((k + 1) * stride))
            positive.append(_f32(s * mean))
    negative = [-v for v in reversed(positive)] if signed else []
    values = [*negative, 0.0, *positive, 1.0]
    midpoints = [(a + b) / 2 for a, b in itertools.pairwise(values)]  # exact in float64
    # the thresholds on the positive side where the decade changes; ties go up (away from zero)
    first = len(negative)  # the zero code
    edges, bases, start = [first], set(), first + 1
    for n in parts:
        bases.add(start - n)
        start += n
        edges.append(start - 1)  # last code of this decade, then the next decade's (or 1.0)
    assert len(bases) == 1
    return _Map(
        values=torch.tensor(values, dtype=torch.float32),
        midpoints=torch.tensor(midpoints, dtype=torch.float64),
        zero_code=first,
        parts=parts,
        scales=scales,
        base=bases.pop(),
        cuts=tuple(_f32_up(midpoints[i]) for i in edges),
    )


_MAPS = {True: _build(True), False: _build(False)}


def dynamic_map(signed: bool) -> torch.Tensor:
    """The 256 sorted float32 values of the signed (states that can be negative, e.g. first moments)
    or unsigned (non-negative states, e.g. second moments) dynamic map; ``code`` indexes it."""
    return _MAPS[signed].values.clone()


def map_digest(signed: bool) -> str:
    """SHA-256 of the map's values as 256 little-endian float32 (to compare with another build)."""
    values = _MAPS[signed].values.tolist()
    return hashlib.sha256(struct.pack("<256f", *values)).hexdigest()


# --- the elementwise codecs -----------------------------------------------------------------------


def _select(conds: Sequence[torch.Tensor], values: Sequence[float]) -> torch.Tensor:
    """``values[i]`` where ``conds[i - 1]`` is the last true condition (``values[0]`` where none is);
    the conditions are nested (each implies the one before). A chain of selects, not a lookup."""
    out = torch.where(conds[0], values[1], values[0])
    for cond, value in zip(conds[1:], values[2:], strict=True):
        out = torch.where(cond, value, out)
    return out


def _boundary(J: torch.Tensor) -> torch.Tensor:
    """:func:`_boundary_units` of an int32 tensor (float32; int32 arithmetic is exact, the cast
    to float32 is the one rounding)."""
    units = J * _N_STEP + _N_LOW
    return torch.where(J < _FINEST // 2, units, units + (_N_HIGH - _N_LOW)).float()


def _check_floating(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        raise ValueError(f"{name} must be a float32 tensor, got {_describe(t)}")


def _check_codes(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
        raise ValueError(f"{name} must be a uint8 tensor of codes, got {_describe(t)}")


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} of shape {tuple(t.shape)}"
    return type(t).__name__


def encode(y: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """uint8 code of the map value nearest to each element of float32 ``y`` (any shape), ties to the
    larger magnitude, NaN to the zero code. Elementwise ops only (see the module docstring); equal
    to :func:`encode_reference` code for code."""
    _check_floating(y, "y")
    m = _MAPS[signed]
    a = y.abs() if signed else y  # unsigned: a negative y fails every cut and takes code 0
    ge = [a >= cut for cut in m.cuts]
    decade = ge[1:_DECADES]  # |y| reaches decade 1, ..., 6
    n = _select(decade, [float(n) for n in m.parts])
    stride = _select(decade, [float(_FINEST // n) for n in m.parts])
    scale = _select(decade, m.scales)
    slope = _select(
        decade, [n * 2.0**-31 / (_WIDTH * s) for n, s in zip(m.parts, m.scales, strict=True)]
    )
    # candidate fraction k: the nearest value's or one below it (a NaN becomes 0, masked below)
    r = a * slope - (n * (1 / 9) + 0.5)
    k = torch.minimum(torch.where(r > 0, r, 0.0), n - 1).floor()
    # the two values around k's upper threshold, exactly; clamp_max(1) changes no value but keeps
    # a compiler from fusing the rounded product into the subtraction (an FMA would skip its rounding)
    j0, dj = (k * stride).to(torch.int32), stride.to(torch.int32)
    b1 = _boundary(j0 + dj)
    v0 = (scale * (_boundary(j0) + b1)).clamp_max(1.0)
    v1 = (scale * (b1 + _boundary(j0 + 2 * dj))).clamp_max(1.0)
    # 2a >= v0 + v1, exactly: a - v0 and v1 - a are exact wherever rounding could tie them
    up = (a - v0 >= v1 - a) & (k < n - 1)
    code = (n + m.base) + k + up.float()
    code = torch.where(ge[0], torch.where(ge[_DECADES], 255.0, code), float(m.zero_code))
    if signed:
        code = torch.where(y < 0, 254.0 - code.clamp(max=254.0), code)
    return code.to(torch.uint8)


def encode_reference(y: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """:func:`encode` by ``searchsorted`` in the exact (float64) midpoints: the definition."""
    _check_floating(y, "y")
    m = _MAPS[signed]
    mid = m.midpoints.to(y.device)
    y64 = y.double()
    up = torch.searchsorted(mid, y64, right=True)  # a tie goes to the larger value
    down = torch.searchsorted(mid, y64, right=False)  # ... to the smaller one
    code = torch.where(y64 < 0, down, up)
    code = torch.where(torch.isnan(y64), m.zero_code, code)
    return code.to(torch.uint8)


def decode(codes: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """float32 map values of uint8 ``codes`` (any shape), computed arithmetically (no lookup)."""
    _check_codes(codes, "codes")
    m = _MAPS[signed]
    c = codes.float()
    q = (c - m.zero_code).abs() if signed else c + 1  # magnitude index: 2^e <= q < 2^(e+1)
    decade = [q >= n for n in m.parts[1:]]
    n = _select(decade, [float(n) for n in m.parts])
    stride = _select(decade, [float(_FINEST // n) for n in m.parts])
    j0, dj = ((q - n) * stride).to(torch.int32), stride.to(torch.int32)
    value = _select(decade, m.scales) * (_boundary(j0) + _boundary(j0 + dj))
    zero_q, one_q = (0.0, 128.0) if signed else (1.0, 256.0)
    value = torch.where(q == zero_q, 0.0, torch.where(q == one_q, 1.0, value))
    if signed:
        value = torch.where(c < m.zero_code, -value, value)
    return value


def decode_reference(codes: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """``map[codes]``: the 256-entry gather."""
    _check_codes(codes, "codes")
    return _MAPS[signed].values.to(codes.device)[codes.long()]


# --- block-wise -----------------------------------------------------------------------------------


def num_blocks(numel: int) -> int:
    """Number of blocks (absmax entries) of a state of ``numel`` elements."""
    return -(-numel // BLOCK)


def _check_flat(t: torch.Tensor, name: str, dtype: torch.dtype, numel: int | None = None) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != 1 or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous 1-D {dtype} tensor, got {_describe(t)}")
    if numel is not None and t.numel() != numel:
        raise ValueError(f"{name} must have {numel} elements, got {t.numel()}")


def _pieces(numel: int) -> list[tuple[int, int, int]]:
    """``(start, stop, columns)``: the full blocks as one 2-D view, then the partial last block."""
    full = numel // BLOCK * BLOCK
    pieces = [(0, full, BLOCK)] if full else []
    if full < numel:
        pieces.append((full, numel, numel - full))
    return pieces


def _quantize_args(
    x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked ``(codes, absmax)`` for ``x`` (allocated when ``out`` is ``None``); every codec
    implementation validates its arguments here."""
    _check_flat(x, "x", torch.float32)
    numel = x.numel()
    if out is None:
        codes = torch.empty(numel, dtype=torch.uint8, device=x.device)
        absmax = torch.empty(num_blocks(numel), dtype=torch.float32, device=x.device)
    else:
        codes, absmax = out
    _check_flat(codes, "codes", torch.uint8, numel)
    _check_flat(absmax, "absmax", torch.float32, num_blocks(numel))
    return codes, absmax


def _dequantize_args(
    codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    """The checked ``out`` for decoding ``codes`` (allocated when ``None``)."""
    _check_flat(codes, "codes", torch.uint8)
    numel = codes.numel()
    _check_flat(absmax, "absmax", torch.float32, num_blocks(numel))
    if out is None:
        out = torch.empty(numel, dtype=torch.float32, device=codes.device)
    _check_flat(out, "out", torch.float32, numel)
    return out


def quantize_blocks(
    blocks: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, *, signed: bool
) -> None:
    """Encode 2-D ``blocks`` (one block per row, float32) into ``codes`` (uint8, same shape) and
    their absmax into ``absmax`` (one per row). The loop body of :func:`quantize_blockwise`, for a
    caller that compiles it over whole blocks (shapes ``(n, BLOCK)``: no index arithmetic)."""
    encoder = encode if torch.compiler.is_compiling() else encode_reference
    amax = blocks.abs().amax(dim=1)  # inf with an inf in the block, NaN with a NaN
    scale = torch.where(amax == 0, 1.0, amax)  # an all-zero block: y = 0
    # an infinite element: +-1, the end code (inf / inf would be NaN); the rest of its block 0
    y = torch.where(blocks.abs() == math.inf, blocks.clamp(-1.0, 1.0), blocks / scale[:, None])
    codes.copy_(encoder(y, signed=signed))
    absmax.copy_(amax)


def dequantize_blocks(
    codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor, *, signed: bool
) -> None:
    """Decode 2-D ``codes`` (one block per row) with their ``absmax`` into ``out`` (float32, same
    shape): the loop body of :func:`dequantize_blockwise`."""
    decoder = decode if torch.compiler.is_compiling() else decode_reference
    values = decoder(codes, signed=signed)
    # 0 * inf is NaN: the zero code of a block with infinities (absmax inf) decodes to 0
    infinite = absmax.isinf()[:, None] & (values == 0)
    torch.mul(values, absmax[:, None], out=out)
    out.masked_fill_(infinite, 0.0)


def quantize_blockwise(
    x: torch.Tensor,
    *,
    signed: bool,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8, ``x.numel()``) and absmax (float32, one per block of :data:`BLOCK`) of a
    contiguous 1-D float32 ``x``, written into ``out = (codes, absmax)`` when given."""
    codes, absmax = _quantize_args(x, out)
    for start, stop, cols in _pieces(x.numel()):
        quantize_blocks(
            x[start:stop].view(-1, cols),
            codes[start:stop].view(-1, cols),
            absmax[start // BLOCK : -(-stop // BLOCK)],
            signed=signed,
        )
    return codes, absmax


def dequantize_blockwise(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    *,
    signed: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 ``map[code] * absmax`` of each element, written into ``out`` when given (1-D, same
    number of elements as ``codes``)."""
    out = _dequantize_args(codes, absmax, out)
    for start, stop, cols in _pieces(codes.numel()):
        dequantize_blocks(
            codes[start:stop].view(-1, cols),
            absmax[start // BLOCK : -(-stop // BLOCK)],
            out[start:stop].view(-1, cols),
            signed=signed,
        )
    return out
