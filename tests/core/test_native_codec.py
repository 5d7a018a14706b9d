"""The native (C) 8-bit codec: the same codes and values as the reference codec, code for code, on
every input class, and a clean fallback where it cannot be built."""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_quantization import blockwise_reference, boundary_values, sample

import adaptim
from adaptim.core import native_codec, state_precision
from adaptim.core.quantization import (
    BLOCK,
    dequantize_blockwise,
    dynamic_map,
    encode_reference,
    num_blocks,
    quantize_blockwise,
)

SIGNS = pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
HAS_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))

# where a C compiler exists the codec must build: a broken build fails here instead of silently
# falling back to the slower codecs
pytestmark = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: the native codec is off")


def test_builds_where_a_compiler_exists():
    assert native_codec.unavailable_reason() is None
    assert native_codec.available()


def blocks_of(y: torch.Tensor, lead: float) -> torch.Tensor:
    """``y`` laid out 255 to a block behind a first element ``lead`` (+-1.0), so that each block's
    absmax is 1 and the codec encodes ``y`` itself."""
    pad = (-y.numel()) % (BLOCK - 1)
    body = torch.cat([y, torch.zeros(pad)]).view(-1, BLOCK - 1)
    return torch.cat([torch.full((body.shape[0], 1), lead), body], dim=1).reshape(-1)


def encode_via_blocks(y: torch.Tensor, signed: bool) -> torch.Tensor:
    codes, absmax = native_codec.quantize_blockwise(blocks_of(y, 1.0), signed=signed)
    assert bool((absmax == 1).all())
    return codes.view(-1, BLOCK)[:, 1:].reshape(-1)[: y.numel()]


@SIGNS
def test_every_cut_and_its_neighbours(signed):
    y = boundary_values(signed)
    y = y[y.abs() <= 1]  # within a block |y| never exceeds 1
    assert torch.equal(encode_via_blocks(y, signed), encode_reference(y, signed=signed))


@SIGNS
def test_every_bucket_edge(signed):
    """The first and last float32 of every table bucket (2^16 bit patterns each), and a stride of
    float32 patterns through [0, 1], both signs."""
    starts = torch.arange(0, (0x3F800000 >> 16) + 1, dtype=torch.int64) << 16
    patterns = torch.cat(
        [starts, starts + 1, starts + 0xFFFF, starts - 1, torch.arange(0, 0x3F800001, 997)]
    )
    y = patterns.clamp(0, 0x3F800000).to(torch.int32).view(torch.float32)
    for sign in (1.0, -1.0) if signed else (1.0,):
        assert torch.equal(
            encode_via_blocks(y * sign, signed), encode_reference(y * sign, signed=signed)
        )


@SIGNS
@pytest.mark.parametrize("n", [0, 1, 100, BLOCK, BLOCK + 1, 3 * BLOCK + 37, (1 << 17) + 5])
def test_blockwise_equals_the_reference(signed, n):
    x = sample(n, signed, seed=n)
    codes, absmax = native_codec.quantize_blockwise(x, signed=signed)
    expected_codes, expected_absmax = quantize_blockwise(x, signed=signed)
    assert torch.equal(codes, expected_codes) and torch.equal(absmax, expected_absmax)
    if 0 < n <= 3 * BLOCK + 37:  # the brute-force definition, too
        brute_codes, brute_absmax = blockwise_reference(x, signed)
        assert torch.equal(codes, brute_codes) and torch.equal(absmax, brute_absmax)
    values = native_codec.dequantize_blockwise(codes, absmax, signed=signed)
    assert torch.equal(values, dequantize_blockwise(codes, absmax, signed=signed))


@SIGNS
def test_special_blocks(signed):
    """Zero, subnormal, -0.0, infinite and NaN blocks, and infinities inside a NaN block, in full
    and partial blocks."""
    n = 9 * BLOCK + 11
    x = sample(n, signed, seed=3)
    x[:BLOCK] = 0.0
    x[BLOCK : 2 * BLOCK] = torch.linspace(0, 1, BLOCK) * 1e-42  # subnormals
    x[2 * BLOCK : 3 * BLOCK : 2] = -0.0
    x[3 * BLOCK + 5] = math.inf
    x[4 * BLOCK + 6] = -math.inf
    x[4 * BLOCK + 7] = math.inf
    x[5 * BLOCK + 1] = math.nan
    x[6 * BLOCK + 2] = math.nan
    x[6 * BLOCK + 3] = math.inf
    x[6 * BLOCK + 4] = -math.inf
    x[7 * BLOCK + 9] = torch.finfo(torch.float32).max
    x[-3] = math.inf  # the partial last block
    x[-5] = -math.inf
    codes, absmax = native_codec.quantize_blockwise(x, signed=signed)
    expected_codes, expected_absmax = quantize_blockwise(x, signed=signed)
    assert torch.equal(codes, expected_codes)
    assert torch.equal(absmax.nan_to_num(7.0), expected_absmax.nan_to_num(7.0))
    values = native_codec.dequantize_blockwise(codes, absmax, signed=signed)
    expected = dequantize_blockwise(codes, absmax, signed=signed)
    assert torch.equal(values.nan_to_num(7.0), expected.nan_to_num(7.0))
    assert torch.equal(values.isnan(), expected.isnan())


@SIGNS
def test_decodes_every_code(signed):
    codes = torch.arange(256, dtype=torch.uint8).repeat(3)
    absmax = torch.tensor([1.0, 0.25, math.inf])
    values = native_codec.dequantize_blockwise(codes, absmax, signed=signed)
    assert torch.equal(values[:256], dynamic_map(signed))
    assert torch.equal(values[256:512], dynamic_map(signed) * 0.25)
    assert torch.equal(values, dequantize_blockwise(codes, absmax, signed=signed))


@SIGNS
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_and_offsets_do_not_change_codes(signed, threads):
    """Views that start at a block boundary inside a larger buffer, at any thread count, give the
    codes of the whole."""
    x = sample(5 * (1 << 16) + 300, signed, seed=11)
    whole_codes, whole_absmax = quantize_blockwise(x, signed=signed)
    codes = torch.zeros_like(whole_codes)
    absmax = torch.zeros_like(whole_absmax)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = 3 * BLOCK
        native_codec.quantize_blockwise(
            x[start:], signed=signed, out=(codes[start:], absmax[start // BLOCK :])
        )
        native_codec.quantize_blockwise(
            x[:start], signed=signed, out=(codes[:start], absmax[: start // BLOCK])
        )
        assert torch.equal(codes, whole_codes) and torch.equal(absmax, whole_absmax)
        out = torch.full_like(x, math.nan)
        native_codec.dequantize_blockwise(
            codes[start:], absmax[start // BLOCK :], signed=signed, out=out[start:]
        )
        native_codec.dequantize_blockwise(
            codes[:start], absmax[: start // BLOCK], signed=signed, out=out[:start]
        )
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, dequantize_blockwise(whole_codes, whole_absmax, signed=signed))


def test_errors_name_the_argument_and_write_nothing():
    x = torch.randn(300)
    codes, absmax = quantize_blockwise(x, signed=True)
    kept = codes.clone(), absmax.clone()
    with pytest.raises(ValueError, match=r"^x must be a contiguous 1-D torch\.float32"):
        native_codec.quantize_blockwise(x.double(), signed=True, out=(codes, absmax))
    with pytest.raises(ValueError, match=r"^x must be a contiguous"):
        native_codec.quantize_blockwise(x[::2], signed=True)
    with pytest.raises(ValueError, match=r"^absmax must have 2 elements, got 3"):
        native_codec.quantize_blockwise(x, signed=True, out=(codes, torch.empty(3)))
    with pytest.raises(ValueError, match=r"^codes must be a contiguous 1-D torch\.uint8"):
        native_codec.dequantize_blockwise(codes.long(), absmax, signed=True)
    with pytest.raises(ValueError, match=r"^out must have 300 elements, got 256"):
        native_codec.dequantize_blockwise(codes, absmax, signed=True, out=torch.empty(256))
    with pytest.raises(ValueError, match=r"native codec runs on CPU tensors, got one on meta"):
        native_codec.quantize_blockwise(x.to("meta"), signed=True)
    assert torch.equal(codes, kept[0]) and torch.equal(absmax, kept[1])


# --- building and falling back -------------------------------------------------------------------


def run_python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


PROBE = (
    "from adaptim.core import native_codec as n; print(n.available(), '|', n.unavailable_reason())"
)


def test_builds_into_the_cache_directory_once(tmp_path):
    assert run_python(PROBE, ADAPTIM_CACHE_DIR=str(tmp_path)) == "True | None"
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 1 and built[0].startswith("native_codec-") and built[0].endswith(".so")
    # a second process loads the cached library: no compiler needed
    assert run_python(PROBE, ADAPTIM_CACHE_DIR=str(tmp_path), PATH="", CC="") == "True | None"
    assert sorted(p.name for p in tmp_path.iterdir()) == built


def test_disabled_or_without_a_compiler_falls_back(tmp_path):
    assert run_python(PROBE, ADAPTIM_NATIVE_CODEC="0") == (
        "False | disabled by ADAPTIM_NATIVE_CODEC=0"
    )
    empty = tmp_path / "empty"
    assert run_python(PROBE, ADAPTIM_CACHE_DIR=str(empty), PATH="", CC="") == (
        "False | no C compiler found ($CC, cc, gcc or clang)"
    )


def test_a_failing_compiler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native_codec, "_flag_sets", lambda: [("--no-such-flag",)])
    lib, reason = native_codec._build()
    assert lib is None and reason.startswith("could not build the native codec: ")
    with pytest.raises(RuntimeError, match="native 8-bit codec is unavailable"):
        monkeypatch.setattr(native_codec, "_library", lambda: (None, reason))
        native_codec.quantize_blockwise(torch.zeros(4), signed=True)


# --- what the optimizers get -----------------------------------------------------------------------


def test_optimizers_on_cpu_use_it(monkeypatch):
    monkeypatch.setattr(state_precision, "_codecs", {})
    quantize, dequantize = state_precision._codec(torch.device("cpu"), True)
    assert quantize.__qualname__.startswith("state_codec")
    assert dequantize.__qualname__.startswith("state_codec")


@SIGNS
def test_the_integrators_entry_points_check_what_memory_safety_needs(signed):
    """The unchecked fast path of the optimizers' codec: right arguments give the checked
    functions' codes; wrong ones (sizes, dtypes, strides, another device) reach the checked
    functions, which refuse them naming the argument, before the C loop reads any memory."""
    quantize, dequantize = native_codec.state_codec(signed)
    x = sample(3 * BLOCK + 5, signed, seed=4)
    codes, absmax = torch.empty(x.numel(), dtype=torch.uint8), torch.empty(4)
    quantize(x, out=(codes, absmax))
    expected = quantize_blockwise(x, signed=signed)
    assert torch.equal(codes, expected[0]) and torch.equal(absmax, expected[1])
    values = torch.empty_like(x)
    dequantize(codes, absmax, out=values)
    assert torch.equal(values, dequantize_blockwise(codes, absmax, signed=signed))
    with pytest.raises(ValueError, match=r"^codes must have 773 elements, got 772"):
        quantize(x, out=(codes[:-1], absmax))
    with pytest.raises(ValueError, match=r"^absmax must have 4 elements, got 3"):
        quantize(x, out=(codes, absmax[:3]))
    with pytest.raises(ValueError, match=r"^x must be a contiguous 1-D torch\.float32"):
        quantize(torch.cat([x, x])[::2], out=(codes, absmax))
    with pytest.raises(ValueError, match=r"^out must be a contiguous 1-D torch\.float32"):
        dequantize(codes, absmax, out=values.double())
    with pytest.raises(ValueError, match=r"^out must have 773 elements, got 772"):
        dequantize(codes, absmax, out=values[:-1])
    with pytest.raises(ValueError, match="native codec runs on CPU tensors, got one on meta"):
        dequantize(codes, absmax, out=values.to("meta"))


@pytest.mark.parametrize("name", ["AdamW", "AdaBelief", "Adan"])
def test_an_8bit_run_is_the_same_with_the_table_codec(name, monkeypatch):
    """Twenty steps with the native codec against the eager table codec: identical bits."""

    def run(codec):
        monkeypatch.setattr(state_precision, "_codecs", {})
        monkeypatch.setattr(state_precision, "_codec", codec)
        torch.manual_seed(0)
        params = [torch.randn(64, 130, requires_grad=True), torch.randn(5000, requires_grad=True)]
        opt = getattr(adaptim, name)(params, lr=1e-2, state_bits=8)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g) * 10.0 ** torch.randint(
                    -8, 2, (), generator=g
                )
            opt.step()
        return [p.detach().clone() for p in params], opt.state_dict()

    def table(device, signed):
        return (
            functools.partial(quantize_blockwise, signed=signed),
            functools.partial(dequantize_blockwise, signed=signed),
        )

    native = state_precision._codec
    params_native, state_native = run(native)
    params_table, state_table = run(table)
    assert all(torch.equal(a, b) for a, b in zip(params_native, params_table, strict=True))
    for pid, state in state_native["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, state_table["state"][pid][key]), key
    assert num_blocks(5000) == len(state_native["state"][1]["exp_avg_absmax"])


def test_the_portable_build_gives_the_same_codes(tmp_path, monkeypatch):
    """Built without ``-march=native`` and without OpenMP (the scalar loop, slices on a thread
    pool), as on a CPU without AVX2 or a compiler without OpenMP: the same codes and values."""
    monkeypatch.setenv("ADAPTIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native_codec, "_flag_sets", lambda: [native_codec._BASE_FLAGS])
    lib, reason = native_codec._build()
    assert reason is None and not lib.adaptim_codec_vectorized() and not lib.adaptim_codec_openmp()
    monkeypatch.setattr(native_codec, "_library", lambda: (lib, None))
    monkeypatch.setattr(native_codec, "_PARALLEL_MIN", 1024)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for signed in (True, False):
            x = sample(40 * BLOCK + 13, signed, seed=21)
            x[3 * BLOCK + 1] = math.inf
            x[5 * BLOCK + 2] = math.nan
            codes, absmax = native_codec.quantize_blockwise(x, signed=signed)
            expected = quantize_blockwise(x, signed=signed)
            assert torch.equal(codes, expected[0])
            assert torch.equal(absmax.nan_to_num(7.0), expected[1].nan_to_num(7.0))
            values = native_codec.dequantize_blockwise(codes, absmax, signed=signed)
            reference = dequantize_blockwise(codes, absmax, signed=signed)
            assert torch.equal(values.nan_to_num(7.0), reference.nan_to_num(7.0))
            y = boundary_values(signed)
            y = y[y.abs() <= 1]
            assert torch.equal(encode_via_blocks(y, signed), encode_reference(y, signed=signed))
    finally:
        torch.set_num_threads(before)


def test_the_temporary_cache_must_be_private(tmp_path, monkeypatch):
    """The fallback cache under a shared temporary directory is used only while it is a real
    directory of this user's that no one else can write: another user could plant a library."""
    monkeypatch.setattr(native_codec.tempfile, "gettempdir", lambda: str(tmp_path))
    private = tmp_path / f"adaptim-{os.getuid()}"
    assert native_codec._private_temp_dir() == private
    assert (private.stat().st_mode & 0o777) == 0o700
    private.chmod(0o777)
    assert native_codec._private_temp_dir() is None
    private.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    private.symlink_to(elsewhere)
    assert native_codec._private_temp_dir() is None
