"""The 8-bit codec as a small C loop, compiled on first use: the same codes and values as
:mod:`adaptim.core.quantization`, code for code, at a fraction of the time on a CPU.

Why a C loop. The exact codec costs its arithmetic, not memory traffic. Compiled by Inductor, the
lookup-free codec (every map value rebuilt bit for bit from integers) ran at about 2.3 ns per
element on 2 threads of this 2-core CPU; an 8-bit step decodes and encodes each state once, so the
codec was nine tenths of an 8-bit AdamW step. A C loop can use what Inductor will not: the
65,536-bucket table of the issue (a float32's top 16 bits pick the bucket, one comparison with the
next cut finishes; exact, see ``native_codec.c``) read with AVX2 gathers, and a vectorized absmax.
``benchmarks/codec.py`` measures both.

How it is built. ``native_codec.c`` ships with the package. The first call compiles it with the
system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native``, so the AVX2
loop is used where the CPU has it and a portable loop elsewhere) into a per-user cache keyed by the
source, the flags and the CPU (``$ADAPTIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/adaptim``, else
``~/.cache/adaptim``; a temporary directory if that cannot be written), and loads it with
:mod:`ctypes`: well under a second, once per machine,
against 10-30 s for Inductor's codec. Without a compiler, or with ``ADAPTIM_NATIVE_CODEC=0``,
:func:`available` is false and :mod:`adaptim.core.state_precision` falls back to the Inductor or
the table codec: the same codes, slower. The reason is in :func:`unavailable_reason`.

Threads: ``torch.get_num_threads()``. On Linux, where torch runs on GNU OpenMP, the library is
built with ``-fopenmp`` and shares torch's runtime and thread team (its soname is already loaded).
A separate pool of threads would compete with torch's: its OpenMP workers keep spinning for a while
after each kernel, and with the optimizer's own update between a decode and an encode, an 8-bit
AdamW step ran 1.7x slower than its pieces timed alone. Elsewhere a call is cut at block boundaries
into one slice per thread on a thread pool (ctypes releases the GIL). CPU tensors only; a GPU
keeps the compiled codec.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from adaptim.core.quantization import (
    _MAPS,
    BLOCK,
    _dequantize_args,
    _f32_up,
    _quantize_args,
    num_blocks,
)

__all__ = ["available", "dequantize_blockwise", "quantize_blockwise", "unavailable_reason"]

_SOURCE = "native_codec.c"
_ABI = 1
_BASE_FLAGS = ("-O3", "-shared", "-fPIC", "-fno-fast-math")
#: below this many elements a call runs on the calling thread (a pool hand-off costs ~20 us)
_PARALLEL_MIN = 1 << 16
_BUCKET_SHIFT = 16


class _Map(ctypes.Structure):
    """``codec_map`` of ``native_codec.c``: one map's tables, as the C loop reads them."""

    _fields_ = [
        ("table", ctypes.c_void_p),
        ("first_bucket", ctypes.c_int32),
        ("values", ctypes.c_void_p),
        ("zero_code", ctypes.c_int32),
        ("is_signed", ctypes.c_int32),
    ]


class _Tables:
    """The encoder's bucket table and the decoder's values for one map (kept alive as long as the
    library may read them). See ``native_codec.c`` for what an entry holds."""

    def __init__(self, signed: bool) -> None:
        m = _MAPS[signed]
        # the midpoints between positive-side neighbours (codes c and c + 1 for c >= zero code)
        positive_midpoints = m.midpoints.numpy()[m.zero_code :]
        cuts = np.array([_f32_up(float(v)) for v in positive_midpoints], dtype=np.float32)
        cut_bits = cuts.view(np.uint32)
        last = 0x3F800000 >> _BUCKET_SHIFT  # the bucket of 1.0: |y| never exceeds it
        cut_bucket = cut_bits >> _BUCKET_SHIFT
        if len(np.unique(cut_bucket)) != len(cut_bucket) or cut_bucket.max() > last:
            raise AssertionError("a bucket holds two cuts: the one-comparison encoder is not exact")
        first = int(cut_bucket[0]) - 1  # entry 0: every bucket below the first cut's
        buckets = np.arange(first, last + 1, dtype=np.uint32)
        below = np.searchsorted(cut_bucket, buckets, side="left")  # cuts in lower buckets
        threshold = np.full(len(buckets), 1 << _BUCKET_SHIFT, dtype=np.int64)  # none: never reached
        threshold[cut_bucket - first] = cut_bits & ((1 << _BUCKET_SHIFT) - 1)
        self.table = np.ascontiguousarray(
            (below.astype(np.int64) << 17) | threshold, dtype=np.int32
        )
        self.values = m.values.numpy().astype(np.float32).copy()
        self.struct = _Map(
            self.table.ctypes.data, first, self.values.ctypes.data, m.zero_code, int(signed)
        )
        self.pointer = ctypes.pointer(self.struct)


_TABLES = {True: _Tables(True), False: _Tables(False)}


def _cache_dirs() -> list[Path]:
    """Where built libraries are looked for and go, in order: ``$ADAPTIM_CACHE_DIR``, else the
    user's cache directory; then a private directory under the temporary directory, for when
    that cannot be written."""
    dirs = []
    base = os.environ.get("ADAPTIM_CACHE_DIR")
    if base:
        dirs.append(Path(base))
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        try:
            dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "adaptim")
        except RuntimeError:  # no home directory (an arbitrary user id in a container)
            pass
    private = _private_temp_dir()
    if private is not None:
        dirs.append(private)
    return dirs


def _private_temp_dir() -> Path | None:
    """``$TMPDIR/adaptim-<uid>``, created mode 0700, and used only while it is a real directory
    owned by this user that no one else can write: in a shared temporary directory another user
    could otherwise plant a library there for this process to load."""
    path = Path(tempfile.gettempdir()) / f"adaptim-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return path


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


#: /proc/cpuinfo lines that say what ``-march=native`` compiles for (x86, then AArch64)
_CPU_FIELDS = ("model name", "flags", "CPU implementer", "CPU part", "CPU architecture", "Features")


@functools.cache
def _cpu() -> bytes:
    """What ``-march=native`` compiles for: a library built on another CPU (a home directory
    shared by several machines) may not run on this one, so it is another cache entry."""
    identity = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as f:
            identity += sorted({line for line in f if line.startswith(_CPU_FIELDS)})
    except OSError:
        pass
    return "\n".join(identity).encode()


def _library_name(source: bytes, flags: tuple[str, ...]) -> str:
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), _cpu()]))
    return f"native_codec-{key.hexdigest()[:20]}.so"


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    """The loaded library, or ``(None, reason)``: never an exception, since the codecs it stands
    in for need nothing."""
    if os.environ.get("ADAPTIM_NATIVE_CODEC", "1") == "0":
        return None, "disabled by ADAPTIM_NATIVE_CODEC=0"
    if sys.platform == "win32":
        return None, "the native codec is built on Linux and macOS only"
    try:
        return _find_or_build()
    except Exception as exc:  # anything unforeseen: the fallback codecs give the same codes
        return None, f"could not build the native codec: {type(exc).__name__}: {exc}"


def _find_or_build() -> tuple[ctypes.CDLL | None, str | None]:
    """A cached build if there is one that loads, else one built now."""
    source = resources.files("adaptim.core").joinpath(_SOURCE).read_bytes()
    candidates = [(flags, _library_name(source, flags)) for flags in _flag_sets()]
    dirs = _cache_dirs()
    errors = []
    for flags, name in candidates:
        for directory in dirs:
            if (directory / name).exists():
                lib, reason = _load(directory / name, flags)
                if lib is not None:
                    return lib, None
                errors.append(str(reason))
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found ($CC, cc, gcc or clang)"
    for flags, name in candidates:
        for directory in dirs:
            try:
                _compile(compiler, flags, source, directory / name)
            except _Unwritable as exc:  # this cache directory: the next one
                errors.append(f"{directory}: {exc}")
                continue
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{compiler} {' '.join(flags)}: {exc}")
                break  # these flags fail anywhere: the next ones
            lib, reason = _load(directory / name, flags)
            if lib is not None:
                return lib, None
            errors.append(str(reason))
            break
    return None, "could not build the native codec: " + "; ".join(errors)


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if line.count(" ") >= 5}
    except OSError:
        return set()
    return {p for p in paths if any(n in Path(p).name for n in ("gomp", "iomp", "libomp"))}


def _load(path: Path, flags: tuple[str, ...]) -> tuple[ctypes.CDLL | None, str | None]:
    before = _openmp_runtimes()
    try:
        lib = ctypes.CDLL(str(path))
        if lib.adaptim_codec_abi() != _ABI:
            return None, f"{path} is not the codec this adaptim expects"
    except (OSError, AttributeError) as exc:
        return None, f"could not load {path}: {exc}"
    if "-fopenmp" in flags and _openmp_runtimes() - before:
        # it brought an OpenMP runtime of its own (clang's libomp, or torch's is renamed): its
        # threads would compete with torch's; a build without OpenMP slices on a thread pool
        return None, f"{path} loads a second OpenMP runtime"
    _declare(lib)
    return lib, None


def _flag_sets() -> list[tuple[str, ...]]:
    """The flags to try, best first: ``-march=native`` (the AVX2 loop where the CPU has it) is not
    known to every compiler; OpenMP only where torch itself runs on OpenMP, and a build that
    brings a runtime of its own instead of sharing torch's is refused when loaded."""
    openmp = sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()
    sets = []
    for extra in (("-march=native",), ()):
        if openmp:
            sets.append((*_BASE_FLAGS, *extra, "-fopenmp"))
        sets.append((*_BASE_FLAGS, *extra))
    return sets


class _Unwritable(OSError):
    """A cache directory that cannot take the library (not the compiler's fault)."""


def _compile(compiler: str, flags: tuple[str, ...], source: bytes, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=target.parent)
    except OSError as exc:  # read-only, no permission, not a directory
        raise _Unwritable(str(exc)) from exc
    try:
        src = Path(tmp) / _SOURCE
        src.write_bytes(source)
        out = Path(tmp) / target.name
        done = subprocess.run(
            [compiler, *flags, "-o", str(out), str(src), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.strip()[-500:] or "compiler failed")
        os.replace(out, target)  # atomic: a concurrent process sees the old or the whole library
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.adaptim_quantize.argtypes = [p, i64, p, p, ctypes.POINTER(_Map), i32]
    lib.adaptim_quantize.restype = None
    lib.adaptim_dequantize.argtypes = [p, p, i64, p, ctypes.POINTER(_Map), i32]
    lib.adaptim_dequantize.restype = None
    lib.adaptim_codec_vectorized.restype = ctypes.c_int
    lib.adaptim_codec_openmp.restype = ctypes.c_int


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    return _build()


def available() -> bool:
    """Whether the native codec is built and loaded (building it on the first call)."""
    return _library()[0] is not None


def unavailable_reason() -> str | None:
    """Why the native codec cannot be used here, or ``None`` when it can."""
    return _library()[1]


def vectorized() -> bool:
    """Whether the library was built with its AVX2 loop (else the portable one)."""
    lib = _library()[0]
    return bool(lib is not None and lib.adaptim_codec_vectorized())


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adaptim-codec")


def _slices(lib: ctypes.CDLL, numel: int) -> list[tuple[int, int]]:
    """Block-aligned ``(start, stop)`` slices, one per thread where the library cannot thread
    itself (no OpenMP), else one."""
    threads = torch.get_num_threads()
    if threads <= 1 or numel < _PARALLEL_MIN or lib.adaptim_codec_openmp():
        return [(0, numel)]
    blocks = num_blocks(numel)
    per = -(-blocks // threads) * BLOCK
    return [(a, min(numel, a + per)) for a in range(0, numel, per)]


def _run(calls: list[functools.partial[None]]) -> None:
    if len(calls) == 1:
        calls[0]()
        return
    for future in [_pool(len(calls)).submit(c) for c in calls]:
        future.result()


def _check_cpu(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"the native codec runs on CPU tensors, got one on {t.device}")


def _lib() -> ctypes.CDLL:
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"the native 8-bit codec is unavailable: {reason}")
    return lib


def quantize_blockwise(
    x: torch.Tensor, *, signed: bool, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`adaptim.core.quantization.quantize_blockwise`, in C (CPU tensors)."""
    lib = _lib()
    codes, absmax = _quantize_args(x, out)
    _check_cpu(x, codes, absmax)
    _quantize(lib, x, codes, absmax, signed)
    return codes, absmax


def dequantize_blockwise(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    *,
    signed: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`adaptim.core.quantization.dequantize_blockwise`, in C (CPU tensors)."""
    lib = _lib()
    out = _dequantize_args(codes, absmax, out)
    _check_cpu(codes, absmax, out)
    _dequantize(lib, codes, absmax, out, signed)
    return out


def _quantize(
    lib: ctypes.CDLL, x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, signed: bool
) -> None:
    """The C call on checked arguments: contiguous 1-D CPU tensors of matching sizes."""
    struct, threads, numel = _TABLES[signed].pointer, torch.get_num_threads(), x.numel()
    slices = _slices(lib, numel)
    if len(slices) == 1:  # the usual case (OpenMP threads inside): no partials, no pool
        lib.adaptim_quantize(
            x.data_ptr(), numel, codes.data_ptr(), absmax.data_ptr(), struct, threads
        )
        return
    _run(
        [
            functools.partial(
                lib.adaptim_quantize,
                x.data_ptr() + 4 * a,
                b - a,
                codes.data_ptr() + a,
                absmax.data_ptr() + 4 * (a // BLOCK),
                struct,
                threads,
            )
            for a, b in slices
        ]
    )


def _dequantize(
    lib: ctypes.CDLL, codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor, signed: bool
) -> None:
    """The C call on checked arguments: contiguous 1-D CPU tensors of matching sizes."""
    struct, threads, numel = _TABLES[signed].pointer, torch.get_num_threads(), codes.numel()
    slices = _slices(lib, numel)
    if len(slices) == 1:
        lib.adaptim_dequantize(
            codes.data_ptr(), absmax.data_ptr(), numel, out.data_ptr(), struct, threads
        )
        return
    _run(
        [
            functools.partial(
                lib.adaptim_dequantize,
                codes.data_ptr() + a,
                absmax.data_ptr() + 4 * (a // BLOCK),
                b - a,
                out.data_ptr() + 4 * a,
                struct,
                threads,
            )
            for a, b in slices
        ]
    )


def state_codec(
    signed: bool,
) -> tuple[Callable[..., None], Callable[..., None]]:
    """``(quantize, dequantize)`` for the 8-bit states, with the signatures
    ``quantize(x, out=(codes, absmax))`` and ``dequantize(codes, absmax, out=values)``. The
    integrator calls them a few hundred times a step on buffers it built itself, so they test only
    what the C loop's memory safety needs (dtypes, CPU, contiguity, sizes) in one expression, and
    hand anything else to the checked functions, which name what is wrong."""
    lib = _lib()

    def quantize(x: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        codes, absmax = out
        if _plain(x, codes, absmax):
            _quantize(lib, x, codes, absmax, signed)
        else:
            quantize_blockwise(x, signed=signed, out=out)

    def dequantize(codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor) -> None:
        if _plain(out, codes, absmax):
            _dequantize(lib, codes, absmax, out, signed)
        else:
            dequantize_blockwise(codes, absmax, signed=signed, out=out)

    return quantize, dequantize


def _plain(values: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor) -> bool:
    """What the C loop's memory safety needs, in one expression: float32 values, uint8 codes and
    float32 absmax of matching sizes, contiguous, on the CPU."""
    n = values.numel()
    return (
        values.dtype is torch.float32
        and codes.dtype is torch.uint8
        and absmax.dtype is torch.float32
        and codes.numel() == n
        and absmax.numel() == -(-n // BLOCK)
        and values.is_contiguous()
        and codes.is_contiguous()
        and absmax.is_contiguous()
        and values.device.type == codes.device.type == absmax.device.type == "cpu"
    )
