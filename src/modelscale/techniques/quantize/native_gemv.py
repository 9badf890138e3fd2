"""Our own int8 weight-only matrix-vector kernel for AVX-512 CPUs, built once with the system C compiler.

ATen's packed int8 CPU kernel (`aten._weight_int8pack_mm`) is compute-bound at one thread: on a
4096×4096 layer it reads the weights at about a third of the core's memory bandwidth. Decoding one
token at a time is a matrix-vector product whose cost should be the bytes of the weights, so this file
holds a small C kernel that streams the int8 rows once and keeps the arithmetic off the critical path:

    y[m, n] = Σ_g s[n, g] · Σ_{k ∈ g} x[m, k] · q[n, k]        (symmetric int8 codes q, group scales s)

Activations are rounded once per call to 16-bit integers with one scale per chunk of ≤ 256 features
(relative error ~5e-5, well below bf16 activations' ~2e-3; an outlier costs precision only in its own
chunk) and split exactly into two signed bytes, x16 = 256·xh + xl. The codes are stored unsigned
(int8: u = q + 128; int4: the nibbles), so each 64 weights of a row take two vpdpbusd (u8 × s8 into
int32 lanes, AVX512-VNNI) — one instruction per 32 weight-activation products, where widening the
weights to 16 bits took two — and a chunk's sum (acc_h·256 + acc_l − offset·Σx16, exact in int32)
is scaled once (activation scale × the row's group scale) into float32. With `activation_bits=8` the
activations are rounded to one signed byte per chunk instead (|x8| ≤ 127; relative output error
0.6-0.7% on Gaussian activations, about 4x that of bf16 activations) and each 64 weights take ONE
vpdpbusd: in `benchmarks/results/quantize_llm_cpu.json` at batch 1, int4 g128 6.6 → 6.9x (4096²)
and 7.1 → 7.2x (4096→11008) fp32, int8 g128 3.4 → 4.1x and 3.7 → 4.3x (the two-row int4 layout
left the 16-bit path little behind). Four output rows are computed together from ONE contiguous stream: the codes are
stored in blocks of 4 rows, 64 features of each row in turn (`pack_int8_rows`; int4: 64 bytes per
64 features of two rows, low and high nibbles, `pack_int4_rows`, so one load and two masks unpack
two rows) — four separate row streams read at about half the memory bandwidth here. int4 is
prefetched 8 KB ahead into L2; int8 streams best on the hardware prefetcher alone. Rows of a batch
(m) reuse the block from L1. Asymmetric int8 codes are shifted by the caller, which adds the zero-point
term itself (see `kernels.Layout.run`). Groups must be 32 or multiples of 64: with groups of 32 each
64-feature chunk takes two group scales, one per half of the int32 lanes (lanes 0-7 hold features
0-31), so the chunk's sum is scaled per lane instead of once.

The kernel is compiled on first use with `cc -O3 -mavx512f -mavx512bw -mavx512vnni -fopenmp` into
the user's cache (`$MODELSCALE_CACHE`, else `$XDG_CACHE_HOME/modelscale`, else `~/.cache/modelscale`), keyed by a hash
of its source and flags, and loaded with ctypes (the call releases the GIL). Where the CPU lacks
AVX-512 VNNI, no compiler is installed or the build fails, `unavailable()` says why and the weight-only
layer simply never offers the path; its outputs are checked against the float reference before it
may be chosen, like every other path (`kernels.check_path`).

Example::

    from modelscale.techniques.quantize.native_gemv import int8_gemv, pack_int8_rows, unavailable
    if unavailable() is None:  # q_int8: N × K codes, scales: N × K/group float32
        y = int8_gemv(x.float().contiguous(), pack_int8_rows(q_int8), scales, group_size)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from modelscale.techniques.quantize.native_gemv_source import _SOURCE

_FLAGS = [
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512vnni",
    "-mfma",
    "-fopenmp",
    "-shared",
    "-fPIC",
]
MAX_CHUNK = 256  # activation features per 16-bit scale (each int32 lane sums 16 of them: exact)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return set(next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), []))
    except OSError:
        return set()


def _cache_dir() -> Path:
    root = os.environ.get("MODELSCALE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "modelscale"
    )
    return Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded kernel library, None) or (None, why it is not available)."""
    if not {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= _cpu_flags():
        return None, "the CPU has no AVX-512 with VNNI (F, BW, VL, VNNI)"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) to build it"
    flags = list(_FLAGS)
    tag = hashlib.sha256((_SOURCE + " ".join(flags) + cc).encode()).hexdigest()[:16]
    target = None
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "modelscale-kernels"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        target = folder / f"int8_gemv-{tag}.so"
        if target.is_file() or os.access(folder, os.W_OK):
            break
    if target is None:
        return None, "no writable cache folder for the built kernel"
    if not target.is_file():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, out = Path(tmp) / "int8_gemv.c", Path(tmp) / "int8_gemv.so"
            src.write_text(_SOURCE, encoding="utf-8")
            try:
                done = subprocess.run([cc, *flags, str(src), "-o", str(out)], capture_output=True, text=True,
                                      timeout=120, check=False)  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"building it failed: {exc}"
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0][:160]
                return None, f"building it with {Path(cc).name} failed: {first}"
            os.replace(out, target)  # atomic: a concurrent build ends with one complete file
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        return None, f"loading the built kernel failed: {exc}"
    fn = lib.ms_gemv
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_int] * 4
    planned = lib.ms_gemv_plan
    planned.restype = ctypes.c_int
    planned.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int]  # fmt: skip
    return lib, None


def unavailable() -> str | None:
    """None when the kernel can run here, else the one-line reason it cannot."""
    return _library()[1]


def chunk_size(k: int, group: int) -> int | None:
    """Features per activation scale: the largest multiple of 64 up to `MAX_CHUNK` dividing the group
    (so an outlier feature costs precision only within its own chunk), or 64 for groups of 32 (two group
    scales per chunk); None when none exists."""
    if group <= 0 or k % group:
        return None
    if group == 32:
        return 64 if k % 64 == 0 else None
    for c in range(min(group, MAX_CHUNK) // 64 * 64, 0, -64):
        if group % c == 0:
            return c
    return None


def shape_problem(k: int, group: int) -> str | None:
    """Why a layer of `k` input features in groups of `group` cannot use the kernel (None: it can)."""
    if chunk_size(k, group) is None:
        return (
            f"our AVX-512 kernel needs the group size ({group}) to be 32 or a multiple of 64 dividing "
            f"in_features ({k}), and in_features a multiple of 64"
        )
    return None


def int8_gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    group: int,
    zero_term: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation_bits: int = 16,
) -> torch.Tensor:
    """x (..., K, float32, CPU) · dequant(w)ᵀ (+ bias) with `packed` = `pack_int8_rows(w)` (w int8 N × K)
    and scales float32 (N × K/group); `zero_term` (N × K/group, float32: s · z per group) is taken off
    as Σ_g zero_term[:, g] · Σ_{k ∈ g} x_k. `activation_bits` 8 rounds x to one byte per chunk."""
    return _gemv(8, x, packed, scales, group, 128, zero_term, bias, activation_bits)


def int4_gemv(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    group: int,
    offset: int,
    zero_term: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation_bits: int = 16,
) -> torch.Tensor:
    """x (..., K, float32) · ((nibbles - offset) · s)ᵀ (+ bias) with `packed` from `pack_int4_rows`
    (N × K/2 uint8) and scales float32 (N × K/group); `offset` is 8 for symmetric codes, 0 for
    zero-point codes, whose term `zero_term` (s · z, N × K/group) is taken off as for `int8_gemv`."""
    return _gemv(4, x, packed, scales, group, int(offset), zero_term, bias, activation_bits)


def _gemv(bits, x, packed, scales, group, offset, zero_term, bias, activation_bits=16) -> torch.Tensor:
    """Check the operands of the kernel for `bits`-bit unsigned codes and call it: one allocation (the
    output) and no other tensor op, since each costs tens of µs when a weight stream has just flushed
    the caches, as between the layers of a decoder."""
    lib, why = _library()
    kind = f"int{bits}"
    if lib is None:
        raise RuntimeError(f"the {kind} GEMV kernel is unavailable: {why}")
    k = x.shape[-1]
    n = scales.shape[0]
    optional = [t for t in (zero_term, bias) if t is not None]
    if (
        x.dtype != torch.float32
        or packed.dtype != torch.uint8
        or any(t.dtype != torch.float32 for t in (scales, *optional))
    ):
        raise TypeError(f"{kind}_gemv takes float32 x, uint8 packed codes and float32 scales")
    columns = k if bits == 8 else k // 2
    if (
        x.device.type != "cpu"
        or packed.shape != (n + (-n % 4), columns)
        or scales.shape != (n, k // max(group, 1))
        or (zero_term is not None and zero_term.shape != scales.shape)
        or (bias is not None and bias.shape != (n,))
    ):
        raise ValueError(
            f"{kind}_gemv: shapes x {tuple(x.shape)}, packed {tuple(packed.shape)}, scales {tuple(scales.shape)}"
        )
    c = chunk_size(k, group)
    if c is None:
        raise ValueError(shape_problem(k, group))
    if not x.is_contiguous():
        x = x.contiguous()
    for t in (packed, scales, *optional):
        if not t.is_contiguous():
            raise ValueError(f"{kind}_gemv takes contiguous codes, scales, zero term and bias")
    y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    m = x.numel() // k if k else 0
    code = lib.ms_gemv(x.data_ptr(), packed.data_ptr(), scales.data_ptr(),
                       None if zero_term is None else zero_term.data_ptr(), None if bias is None else bias.data_ptr(),
                       y.data_ptr(), m, n, k, group, c, bits, offset, activation_bits, torch.get_num_threads())  # fmt: skip
    if code == 2:
        raise MemoryError(f"{kind}_gemv could not allocate its activation buffer ({m} × {k})")
    if code:
        raise ValueError(shape_problem(k, group) or f"{kind}_gemv refused the shapes")
    return y


class Plan:
    """One layer's kernel operands, checked once: `plan(x, bias)` is `int{bits}_gemv(x, ...)` with only x's
    dtype, width and layout checked per call (the plan keeps its tensors alive, so the pointers it
    hands the kernel stay valid)."""

    def __init__(self, bits, packed, scales, group, offset, zero_term=None, activation_bits=16) -> None:
        n, k = scales.shape[0], scales.shape[1] * group
        # checks every operand
        _gemv(bits, torch.zeros(1, k), packed, scales, group, offset, zero_term, None, activation_bits)
        self.tensors = (packed, scales, zero_term)
        self._args = (bits, packed, scales, group, offset, zero_term, activation_bits)
        self.rows, self.width = n, k
        ptrs = [t.data_ptr() if t is not None else 0 for t in self.tensors]
        self._params = (ctypes.c_int64 * 10)(
            *ptrs, n, k, group, chunk_size(k, group), bits, offset, activation_bits
        )
        self._call = _library()[0].ms_gemv_plan

    def __reduce__(self):  # copies and pickles rebuild the plan around their own tensors' pointers
        return Plan, self._args

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # few attribute reads: each costs ~1 µs when a weight stream has just flushed the caches
        shape = x.shape
        if x.dtype != torch.float32 or not x.is_cpu or shape[-1] != self.width:
            raise ValueError(
                f"the kernel takes float32 CPU inputs of width {self.width}, got {x.dtype} {tuple(shape)}"
            )
        if bias is not None and (  # every call: a parameter's data can be swapped in place
            bias.dtype != torch.float32
            or bias.shape != (self.rows,)
            or not bias.is_contiguous()
            or not bias.is_cpu
        ):
            raise ValueError(f"the kernel takes a contiguous float32 CPU bias of {self.rows}")
        if not x.is_contiguous():
            x = x.contiguous()
        y = torch.empty((*shape[:-1], self.rows), dtype=torch.float32)
        code = self._call(x.data_ptr(), y.data_ptr(), x.numel() // self.width, None if bias is None else bias.data_ptr(),
                          self._params, torch.get_num_threads())  # fmt: skip
        if code:
            raise (
                MemoryError("the kernel could not allocate its activation buffer")
                if code == 2
                else ValueError("the kernel refused its shapes")
            )
        return y


def _interleave(rows: torch.Tensor, unit: int) -> torch.Tensor:
    """(N × B) bytes → blocks of 4 rows, `unit` bytes of each row in turn (the kernel's one stream);
    N is padded to a multiple of 4 with zero rows. Shape: (⌈N/4⌉·4) × B, contiguous."""
    n, b = rows.shape
    pad = -n % 4
    if pad:
        rows = torch.cat((rows, rows.new_zeros(pad, b)))
    return rows.view(-1, 4, b // unit, unit).transpose(1, 2).contiguous().view(-1, b)


def _deinterleave(packed: torch.Tensor, unit: int, n: int) -> torch.Tensor:
    rows, b = packed.shape
    out = packed.view(rows // 4, b // unit, 4, unit).transpose(1, 2).reshape(rows, b)
    return out[:n].clone() if n < rows else out  # a slice would keep the padded storage (and fail to save)


def pack_int8_rows(codes: torch.Tensor) -> torch.Tensor:
    """The kernel's int8 layout from signed codes (N × K, int8, K % 64 == 0): unsigned u = q + 128, in
    4-row blocks, 64 features of each row in turn (zero rows pad N to a multiple of 4)."""
    return _interleave((codes.to(torch.int16) + 128).to(torch.uint8), 64)


def unpack_int8_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int8_rows`: the N × K int8 codes."""
    return (_deinterleave(packed, 64, n).to(torch.int16) - 128).to(torch.int8)


def pack_int4_rows(nibbles: torch.Tensor) -> torch.Tensor:
    """The kernel's int4 layout from nibbles (N × K, uint8 in [0, 15], K % 64 == 0): rows in 4-row blocks
    (zero rows pad N to a multiple of 4); per 64 features of a block, 64 bytes holding rows 0 and 1
    (byte j: row 0's feature j in the low nibble, row 1's in the high), then 64 bytes for rows 2 and 3 —
    so one load and two masks give two rows' codes. Shape (⌈N/4⌉·4) × K/2."""
    n, k = nibbles.shape
    b = nibbles.to(torch.uint8)
    if n % 4:
        b = torch.cat((b, b.new_zeros(-n % 4, k)))
    b = b.view(-1, 2, 2, k // 64, 64)  # block, pair, row in pair, 64-feature step, feature
    pairs = b[:, :, 0] | (b[:, :, 1] << 4)  # block, pair, step, feature
    return pairs.transpose(1, 2).contiguous().view(-1, k // 2)


def unpack_int4_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int4_rows`: nibbles (N × K, uint8)."""
    rows, half = packed.shape
    k = 2 * half
    pairs = packed.reshape(rows // 4, k // 64, 2, 64)  # block, step, pair, feature
    both = torch.stack((pairs & 0x0F, pairs >> 4), dim=3)  # block, step, pair, row in pair, feature
    out = both.view(rows // 4, k // 64, 4, 64).transpose(1, 2).reshape(rows, k)
    return out[:n].clone() if n < rows else out
