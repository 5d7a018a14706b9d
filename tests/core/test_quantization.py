"""The block-wise 8-bit codec (core/quantization.py): the dynamic maps, the fast (lookup-free) encoder
and decoder against the reference ones code for code, and the block-wise functions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptim.core.quantization import (
    BLOCK,
    MIN_QUANTIZED_NUMEL,
    decode,
    decode_reference,
    dequantize_blockwise,
    dynamic_map,
    encode,
    encode_reference,
    map_digest,
    num_blocks,
    quantize_blockwise,
)

SIGNS = pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])

# SHA-256 of the 256 float32 values (little-endian) of bitsandbytes 0.50.2's
# ``create_dynamic_map(signed)``, equal to torchao 0.18's, built on an x86 CPU with AVX2.
BITSANDBYTES_DIGEST = {
    True: "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c",
    False: "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398",
}
# the largest distance from a point of [-1, 1] (signed) or [0, 1] (unsigned) to its nearest value:
# half the widest gap (0.9 / 64 signed, 0.9 / 128 unsigned), also the distance from -1 to the signed
# map's lowest value
MAX_ERROR = {True: 0.9 / 128, False: 0.9 / 256}


def nearest_code(y: torch.Tensor, signed: bool) -> torch.Tensor:
    """Brute force: the index of the nearest map value (float64 distances are exact), ties to the
    larger magnitude; NaN to the zero code."""
    values = dynamic_map(signed).double()
    codes = []
    for part in y.double().clamp(-2, 2).split(4096):  # beyond +-1 the ends are nearest
        distance = (values[None, :] - part[:, None]).abs()
        best = distance == distance.min(dim=1, keepdim=True).values
        codes.append(torch.where(best, values.abs()[None, :], -1.0).argmax(dim=1))
    code = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)
    return torch.where(torch.isnan(y), 127 if signed else 0, code)


def boundary_values(signed: bool) -> torch.Tensor:
    """Every midpoint of neighbouring values rounded to float32 and its float32 neighbours (two each
    side), the map values, and special values; both signs."""
    values = dynamic_map(signed).double()
    midpoints = ((values[1:] + values[:-1]) / 2).float()
    around = [midpoints]
    up, down = midpoints, midpoints
    for _ in range(2):
        up = torch.nextafter(up, torch.tensor(math.inf))
        down = torch.nextafter(down, torch.tensor(-math.inf))
        around += [up, down]
    tiny = torch.finfo(torch.float32).tiny
    special = torch.tensor(
        [
            0.0,
            1.0,
            2.0,
            math.inf,
            torch.finfo(torch.float32).max,
            tiny,
            tiny / 2,
            1e-45,
            1e-40,
            1e-30,
        ]
    )
    special = torch.cat([special, torch.nextafter(torch.tensor([1.0]), torch.tensor(2.0))])
    positive = torch.cat([*around, dynamic_map(signed), special])
    return torch.cat([positive, -positive, torch.tensor([math.nan])])


# --- the maps -------------------------------------------------------------------------------------


@SIGNS
def test_map_properties(signed):
    values = dynamic_map(signed)
    assert values.dtype == torch.float32 and values.shape == (256,)
    assert bool((values[1:] > values[:-1]).all())  # sorted, 256 distinct values
    assert values[-1].item() == 1.0
    positive = values[values > 0]
    if signed:
        assert values[127].item() == 0.0
        assert torch.equal(values[:127], -values[128:255].flip(0))  # symmetric but for 1.0
        assert values[0].item() == pytest.approx(-0.99296875, abs=1e-7)  # no -1
        assert positive.min().item() == pytest.approx(5.5e-7, rel=1e-6)
    else:
        assert values[0].item() == 0.0
        assert positive.min().item() == pytest.approx(3.25e-7, rel=1e-6)
    # decade 10^(d-6) holds 2^d (signed) or 2^(d+1) (unsigned) positive values, then 1.0
    for d in range(7):
        inside = ((positive > 10.0 ** (d - 7)) & (positive < 10.0 ** (d - 6))).sum().item()
        assert inside == 2 ** (d if signed else d + 1)
    assert map_digest(signed) == BITSANDBYTES_DIGEST[signed]


@SIGNS
def test_map_values_follow_the_documented_formula(signed):
    """Magnitude index q: z leading zero bits, the indicator bit, e fraction bits k; the value is
    10^-z (0.1 + 0.9 (k + 1/2) / 2^e), to within the float32 rounding of its steps."""
    values = dynamic_map(signed).double()
    for code in range(256):
        q = abs(code - 127) if signed else code + 1
        width = 7 if signed else 8
        if q in (0, 1 << width) or (not signed and q == 1):
            continue  # 0 and 1.0
        e = q.bit_length() - 1
        z, k = width - 1 - e, q - (1 << e)
        ideal = 10.0**-z * (0.1 + 0.9 * (k + 0.5) / 2**e) * (-1 if code < 127 and signed else 1)
        assert values[code].item() == pytest.approx(ideal, rel=3e-7), code


def test_dynamic_map_is_a_copy():
    dynamic_map(True).zero_()
    assert dynamic_map(True)[-1].item() == 1.0


def test_constants():
    assert BLOCK == 256 and MIN_QUANTIZED_NUMEL == 4096
    assert [num_blocks(n) for n in (0, 1, 255, 256, 257, 4096)] == [0, 1, 1, 1, 2, 16]


# --- fast codec == reference codec ----------------------------------------------------------------


@SIGNS
def test_decode_every_code(signed):
    codes = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(decode(codes, signed=signed), dynamic_map(signed))
    assert torch.equal(decode_reference(codes, signed=signed), dynamic_map(signed))


@SIGNS
def test_reference_is_the_nearest_code(signed):
    g = torch.Generator().manual_seed(1)
    y = torch.cat([boundary_values(signed), torch.empty(20_000).uniform_(-1, 1, generator=g)])
    y = torch.cat([y, torch.exp(torch.empty(20_000).uniform_(-25, 0, generator=g))])
    assert torch.equal(encode_reference(y, signed=signed).long(), nearest_code(y, signed))


@SIGNS
def test_fast_encode_equals_reference_log_uniform(signed):
    g = torch.Generator().manual_seed(0)
    n = 2_000_000
    magnitude = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-25, 0.01, generator=g))
    sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    y = (magnitude * sign).float()  # from 1.4e-11 to just above 1, both signs
    codes = encode(y, signed=signed)
    assert torch.equal(codes, encode_reference(y, signed=signed))
    assert len(codes.unique()) == 256  # every code is reached


@SIGNS
def test_fast_encode_equals_reference_at_boundaries(signed):
    y = boundary_values(signed)
    codes = encode(y, signed=signed)
    assert torch.equal(codes, encode_reference(y, signed=signed))
    assert torch.equal(codes.long(), nearest_code(y, signed))


@SIGNS
def test_ties_go_to_the_larger_magnitude(signed):
    values = dynamic_map(signed).double()
    midpoints = (values[1:] + values[:-1]) / 2
    exact = (midpoints.float().double() == midpoints) & (midpoints > 0)
    assert exact.sum() > 50  # many midpoints are float32 numbers: ties are reachable
    index = exact.nonzero().flatten()
    y = midpoints[index].float()
    assert torch.equal(encode(y, signed=signed).long(), index + 1)
    assert torch.equal(encode_reference(y, signed=signed).long(), index + 1)
    if signed:
        assert torch.equal(encode(-y, signed=signed).long(), 253 - index)  # mirrored: lower


@SIGNS
def test_special_values(signed):
    nan, inf, sub = math.nan, math.inf, 1e-45
    y = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, inf, -inf, nan, sub, -sub])
    zero = 127 if signed else 0
    if signed:
        expected = [zero, zero, 255, 0, 255, 0, 255, 0, zero, zero, zero]
    else:  # negative values take code 0 (value 0, their nearest)
        expected = [0, 0, 255, 0, 255, 0, 255, 0, 0, 0, 0]
    assert encode(y, signed=signed).tolist() == expected
    assert encode_reference(y, signed=signed).tolist() == expected


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=True), min_size=1, max_size=64),
    signed=st.booleans(),
)
def test_fast_encode_equals_reference_any_float32(values, signed):
    y = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(encode(y, signed=signed), encode_reference(y, signed=signed))


# --- block-wise -----------------------------------------------------------------------------------


def blockwise_reference(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Block by block with Python loops: absmax, the nearest code of x / absmax (an infinite
    element: of its sign, so the end code; the finite ones of its block: 0, so the zero code)."""
    codes, absmax = [], []
    for block in x.split(BLOCK):
        top = block.abs().max()  # inf with an inf, NaN with a NaN
        y = block / top if top != 0 else block  # NaN: all NaN
        if math.isinf(top):
            y = torch.where(block.isinf(), block.sign(), torch.zeros_like(block))
        codes.append(nearest_code(y, signed).to(torch.uint8))
        absmax.append(top)
    return torch.cat(codes), torch.stack(absmax)


def sample(n: int, signed: bool, seed: int) -> torch.Tensor:
    """Blocks at scales from 1e-30 to 1e30, heavy-tailed inside a block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 3)
    scale = 10.0 ** torch.empty(num_blocks(n)).uniform_(-30, 30, generator=g)
    x = x * scale.repeat_interleave(BLOCK)[:n]
    return x if signed else x.abs()


@SIGNS
@pytest.mark.parametrize("n", [3 * BLOCK + 37, BLOCK, 100, 0])
def test_blockwise_equals_block_by_block_reference(signed, n):
    x = sample(n, signed, seed=n)
    codes, absmax = quantize_blockwise(x, signed=signed)
    ref_codes, ref_absmax = blockwise_reference(x, signed) if n else (codes, absmax)
    assert codes.dtype == torch.uint8 and codes.shape == (n,)
    assert absmax.dtype == torch.float32 and absmax.shape == (num_blocks(n),)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(absmax, ref_absmax)
    out = dequantize_blockwise(codes, absmax, signed=signed)
    expected = dynamic_map(signed)[codes.long()] * absmax.repeat_interleave(BLOCK)[:n]
    assert torch.equal(out, expected)


@SIGNS
def test_round_trip_error_is_bounded_by_the_widest_gap(signed):
    values = dynamic_map(signed).double()
    gaps = torch.cat([(values[1:] - values[:-1]) / 2, (1 + values[:1]) if signed else values[:0]])
    widest = gaps.max().item()
    assert widest == pytest.approx(MAX_ERROR[signed], rel=3e-5)  # float32 rounding
    n = 200 * BLOCK + 77
    x = sample(n, signed, seed=3)
    codes, absmax = quantize_blockwise(x, signed=signed)
    error = (dequantize_blockwise(codes, absmax, signed=signed) - x).abs()
    bound = absmax.repeat_interleave(BLOCK)[:n] * (widest + 2**-22)
    assert bool((error <= bound).all())
    relative = (error / absmax.repeat_interleave(BLOCK)[:n]).max().item()
    assert relative > 0.9 * widest  # the bound is reached, not loose
    assert all(t.abs().max() == a for t, a in zip(x.split(BLOCK), absmax, strict=True))


@SIGNS
def test_zero_block_decodes_to_exact_zeros(signed):
    x = sample(4 * BLOCK, signed, seed=4)
    x[BLOCK : 2 * BLOCK] = 0.0
    x[BLOCK + 3] = -0.0
    codes, absmax = quantize_blockwise(x, signed=signed)
    assert absmax[1].item() == 0.0
    assert bool((codes[BLOCK : 2 * BLOCK] == (127 if signed else 0)).all())
    out = dequantize_blockwise(codes, absmax, signed=signed)
    assert bool((out[BLOCK : 2 * BLOCK] == 0).all()) and bool(torch.isfinite(out).all())
    alone, _ = quantize_blockwise(x[2 * BLOCK :].contiguous(), signed=signed)
    assert torch.equal(codes[2 * BLOCK :], alone)


@SIGNS
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_stays_in_its_block(signed, bad):
    x = sample(3 * BLOCK + 10, signed, seed=5)
    clean_codes, clean_absmax = quantize_blockwise(x, signed=signed)
    x[BLOCK + 7] = bad
    x[BLOCK + 9] = bad  # two of them
    codes, absmax = quantize_blockwise(x, signed=signed)
    out = dequantize_blockwise(codes, absmax, signed=signed)
    zero = 127 if signed else 0
    if math.isnan(bad):  # NaN everywhere in its block, as the fp32 state would spread it
        assert math.isnan(absmax[1].item())
        assert bool((codes[BLOCK : 2 * BLOCK] == zero).all())
        assert bool(out[BLOCK : 2 * BLOCK].isnan().all())
    else:  # the infinities kept exactly, the block's finite elements 0, no NaN
        assert absmax[1].item() == math.inf
        inf_at = torch.zeros(BLOCK, dtype=torch.bool)
        inf_at[[7, 9]] = True
        block = out[BLOCK : 2 * BLOCK]
        expected = bad if signed or bad > 0 else 0.0  # the unsigned map has no negative value
        assert bool((block[inf_at] == expected).all())
        assert bool((block[~inf_at] == 0).all()) and not bool(block.isnan().any())
        assert bool((codes[BLOCK : 2 * BLOCK][~inf_at] == zero).all())
    others = torch.ones(x.numel(), dtype=torch.bool)
    others[BLOCK : 2 * BLOCK] = False
    assert bool(torch.isfinite(out[others]).all())
    assert torch.equal(codes[others], clean_codes[others])
    assert torch.equal(absmax[[0, 2, 3]], clean_absmax[[0, 2, 3]])


@SIGNS
def test_chunks_into_given_buffers(signed):
    """The integrator's loop: per chunk (block-aligned), decode into a reused scratch, update it,
    encode back into the state's codes and absmax."""
    n, chunk = 5 * BLOCK + 100, 2 * BLOCK
    x = sample(n, signed, seed=6)
    codes, absmax = quantize_blockwise(x, signed=signed)
    whole = dequantize_blockwise(codes, absmax, signed=signed) * 0.5
    expected = quantize_blockwise(whole, signed=signed)
    scratch = torch.empty(chunk)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        blocks = slice(start // BLOCK, num_blocks(stop))
        work = scratch[: stop - start]
        got = dequantize_blockwise(codes[start:stop], absmax[blocks], signed=signed, out=work)
        assert got.data_ptr() == scratch.data_ptr()
        work.mul_(0.5)
        result = quantize_blockwise(work, signed=signed, out=(codes[start:stop], absmax[blocks]))
        assert result[0].data_ptr() == codes[start:].data_ptr()
    assert torch.equal(codes, expected[0]) and torch.equal(absmax, expected[1])


def test_errors_name_the_argument():
    x = torch.randn(300)
    codes, absmax = quantize_blockwise(x, signed=True)
    with pytest.raises(ValueError, match=r"^x must be a contiguous 1-D torch\.float32"):
        quantize_blockwise(x.double(), signed=True)
    with pytest.raises(ValueError, match=r"^x must be .* shape \(20, 15\)"):
        quantize_blockwise(x.view(20, 15), signed=True)
    with pytest.raises(ValueError, match=r"^x must be a contiguous"):
        quantize_blockwise(x[::2], signed=True)
    with pytest.raises(ValueError, match=r"^codes must have 300 elements, got 299"):
        quantize_blockwise(x, signed=True, out=(codes[:299], absmax))
    with pytest.raises(ValueError, match=r"^absmax must have 2 elements, got 3"):
        quantize_blockwise(x, signed=True, out=(codes, torch.empty(3)))
    with pytest.raises(ValueError, match=r"^codes must be a contiguous 1-D torch\.uint8"):
        dequantize_blockwise(codes.long(), absmax, signed=True)
    with pytest.raises(ValueError, match=r"^absmax must be a contiguous 1-D torch\.float32"):
        dequantize_blockwise(codes, absmax.half(), signed=True)
    with pytest.raises(ValueError, match=r"^out must have 300 elements, got 256"):
        dequantize_blockwise(codes, absmax, signed=True, out=torch.empty(256))
    with pytest.raises(ValueError, match=r"^y must be a float32 tensor, got torch\.float64"):
        encode(x.double(), signed=True)
    with pytest.raises(
        ValueError, match=r"^codes must be a uint8 tensor of codes, got torch\.int64"
    ):
        decode(codes.long(), signed=False)


def test_compiled_fast_codec_equals_eager_reference():
    """Compiled, the block-wise functions run the lookup-free codec; eager, the table codecs. Whole
    blocks only (a partial last block runs the same code on a shorter row), to compile one loop per
    function and map (~35 s cold on 2 busy cores with the partial block, half that without)."""
    torch._dynamo.reset()
    boundaries = torch.cat([boundary_values(True), boundary_values(False)])
    boundaries = boundaries[torch.isfinite(boundaries) & (boundaries.abs() <= 1)]
    # first blocks: boundary values with a 1.0 in each block (absmax 1: x / absmax == x exactly)
    head = torch.cat([boundaries, torch.zeros(-boundaries.numel() % BLOCK)]).view(-1, BLOCK)
    head[:, 0] = 1.0
    x = torch.cat([head.flatten(), sample(8 * BLOCK, True, seed=8)])
    x[-2 * BLOCK : -BLOCK] = 0.0  # a zero block
    x[-BLOCK // 2] = math.inf  # a non-finite block

    def round_trip(x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for signed, t in ((True, x), (False, x.abs())):
            codes, absmax = quantize_blockwise(t, signed=signed)
            out += [codes, absmax, dequantize_blockwise(codes, absmax, signed=signed)]
        return out

    compiled = torch.compile(round_trip, fullgraph=True, dynamic=False)
    for got, expected in zip(compiled(x), round_trip(x), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
