"""Our own int8 weight-only matrix-vector kernel for AVX-512 CPUs, built once with the system C compiler.

ATen's packed int8 CPU kernel (`aten._weight_int8pack_mm`) is compute-bound at one thread: on a
4096×4096 layer it reads the weights at about a third of the core's memory bandwidth. Decoding one
token at a time is a matrix-vector product whose cost should be the bytes of the weights, so this file
holds a small C kernel that streams the int8 rows once and keeps the arithmetic off the critical path:

    y[m, n] = Σ_g s[n, g] · Σ_{k ∈ g} x[m, k] · q[n, k]        (symmetric int8 codes q, group scales s)

Activations are rounded once per call to 16-bit integers with one scale per chunk of ≤ 128 features
(relative error ~3e-5, an order of magnitude below bf16 activations; an outlier costs precision only
in its own chunk). Four output rows are computed together from ONE contiguous stream: the weights are
stored in blocks of 4 rows, 32 features of each row in turn (`pack_int8_rows`) — four separate row
streams read at about half the memory bandwidth here, the interleaved one at ~90% of a plain read.
Each 32 weights are sign-extended to int16 in registers and multiplied-accumulated with the
activations into int32 (vpdpwssd with AVX512-VNNI, else vpmaddwd + vpaddd; exact for a chunk), and a
chunk's sum is scaled once (activation scale × the row's group scale) into float32. Rows of a batch
(m) reuse the block from L1. Asymmetric codes are shifted to int8 by the caller, which adds the
zero-point term itself (see `kernels.Layout.run`). int4 is the same with two features per byte.

The kernel is compiled on first use with `cc -O3 -mavx512f -mavx512bw -fopenmp` into the user's cache
(`$MODELSCALE_CACHE`, else `$XDG_CACHE_HOME/modelscale`, else `~/.cache/modelscale`), keyed by a hash
of its source and flags, and loaded with ctypes (the call releases the GIL). Where the CPU lacks
AVX-512, no compiler is installed or the build fails, `unavailable()` says why and the weight-only
layer simply never offers the path; its outputs are checked against the float reference before it
may be chosen, like every other path (`kernels.check_path`).

Example::

    from modelscale.techniques.quantize.native_gemv import int8_gemv, unavailable
    if unavailable() is None:
        y = int8_gemv(x.float().contiguous(), q_int8, scales_n_by_groups, group_size)
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

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

/* Activations: each chunk of c consecutive features of a row is quantized to int16 with
   |xq| <= 32767, scale xs = max|x| / 32767. A product with an 8-bit weight stays below 2^22, so a
   chunk of up to 512 features sums exactly in int32 (chunks here are at most 128). */
static void quantize_rows(const float* x, int16_t* xq, float* xs, int64_t M, int64_t K, int64_t c) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < K; j += c) {
      const float* xr = x + m * K + j;
      __m512 mx = _mm512_setzero_ps();
      for (int64_t k = 0; k < c; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
      const float top = _mm512_reduce_max_ps(mx);
      const float scale = top > 0.0f ? top / 32767.0f : 1.0f;
      const __m512 inv = _mm512_set1_ps(1.0f / scale);
      for (int64_t k = 0; k < c; k += 16) {
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k), inv));
        _mm256_storeu_si256((__m256i*)(xq + m * K + j + k), _mm512_cvtsepi32_epi16(q));
      }
      xs[m * (K / c) + j / c] = scale;
    }
  }
}

static inline __m512i dot32(__m512i acc, __m512i xv, const int8_t* w) {
  const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)w));
#ifdef __AVX512VNNI__
  return _mm512_dpwssd_epi32(acc, xv, wv);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(xv, wv));
#endif
}

/* y[m*N + n] = sum_g s[n*G + g] * sum_{k in g} x[m*K + k] * w[n*K + k], through int16 activations.
   Needs K % c == 0, gsize % c == 0, c % 32 == 0, c <= 512 (checked here and by the caller). */
int ms_int8_gemv(const float* x, const int8_t* w, const float* s, float* y, int16_t* xq, float* xs,
                 int64_t M, int64_t N, int64_t K, int64_t gsize, int64_t c, int threads) {
  if (c % 32 || c > 512 || K % c || gsize % c || K % gsize) return 1;
  quantize_rows(x, xq, xs, M, K, c);
  const int64_t G = K / gsize, C = K / c, per_group = gsize / c, blocks = (N + 3) / 4;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t r[4]; /* scale rows; the weights of a tail block's missing rows are zeros */
    for (int i = 0; i < 4; ++i) r[i] = (b * 4 + i < N) ? b * 4 + i : N - 1;
    const int8_t* wb = w + b * 4 * K; /* one contiguous stream per block: [r0 32 | r1 32 | r2 32 | r3 32] */
    for (int64_t m = 0; m < M; ++m) {
      const int16_t* xr = xq + m * K;
      __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
      for (int64_t j = 0; j < C; ++j) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = j * c; k < (j + 1) * c; k += 32) {
          const __m512i xv = _mm512_loadu_si512((const void*)(xr + k));
          const int8_t* wk = wb + 4 * k;
          a0 = dot32(a0, xv, wk);
          a1 = dot32(a1, xv, wk + 32);
          a2 = dot32(a2, xv, wk + 64);
          a3 = dot32(a3, xv, wk + 96);
        }
        const float sx = xs[m * C + j];
        const int64_t g = j / per_group;
        t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(sx * s[r[0] * G + g]), t0);
        t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(sx * s[r[1] * G + g]), t1);
        t2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a2), _mm512_set1_ps(sx * s[r[2] * G + g]), t2);
        t3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a3), _mm512_set1_ps(sx * s[r[3] * G + g]), t3);
      }
      const float out[4] = {_mm512_reduce_add_ps(t0), _mm512_reduce_add_ps(t1), _mm512_reduce_add_ps(t2),
                            _mm512_reduce_add_ps(t3)};
      for (int i = 0; i < 4 && b * 4 + i < N; ++i) y[m * N + b * 4 + i] = out[i];
    }
  }
  return 0;
}

/* int4: per row and 32 features, 16 bytes: byte j holds feature j (low nibble) and feature j + 16
   (high nibble); rows interleave in blocks of 4 as for int8. Codes are unsigned nibbles; `offset`
   (8 for symmetric codes, else 0) is taken off once per chunk as offset · Σ x (exact, from the int16
   activations); a zero point is the caller's term. */
static inline __m512i dot32_u4(__m512i acc, __m512i xv, const uint8_t* w, __m256i shifts, __m256i mask) {
  /* 16 bytes in both 128-bit lanes; the upper lane shifted right by 4 (per 16-bit word: the bits
     crossing a byte boundary are masked off) gives [low nibbles | high nibbles] = features 0..31 */
  const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)w));
  const __m512i wv = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srlv_epi16(b, shifts), mask));
#ifdef __AVX512VNNI__
  return _mm512_dpwssd_epi32(acc, xv, wv);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(xv, wv));
#endif
}

int ms_int4_gemv(const float* x, const uint8_t* w, const float* s, float* y, int16_t* xq, float* xs,
                 int64_t M, int64_t N, int64_t K, int64_t gsize, int64_t c, int offset, int threads) {
  if (c % 32 || c > 512 || K % c || gsize % c || K % gsize) return 1;
  quantize_rows(x, xq, xs, M, K, c);
  const int64_t G = K / gsize, C = K / c, per_group = gsize / c, blocks = (N + 3) / 4, row = K / 2;
  float* xsums = xs + M * C; /* the caller's buffer holds 2 · M · C floats: scales, then Σ xq per chunk */
  for (int64_t i = 0; i < M * C; ++i) {
    int32_t total = 0;
    for (int64_t k = 0; k < c; ++k) total += xq[i * c + k];
    xsums[i] = (float)total; /* exact: |Σ| <= 128 · 32767 < 2^24 */
  }
  const __m256i shifts = _mm256_set_epi16(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i mask = _mm256_set1_epi8(0x0F);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t r[4];
    for (int i = 0; i < 4; ++i) r[i] = (b * 4 + i < N) ? b * 4 + i : N - 1;
    const uint8_t* wb = w + b * 4 * row; /* per 32 features: [r0 16 bytes | r1 | r2 | r3] */
    for (int64_t m = 0; m < M; ++m) {
      const int16_t* xr = xq + m * K;
      __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
      float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f; /* offset · Σ x per row: subtracted at the end */
      for (int64_t j = 0; j < C; ++j) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        const float xsum = xsums[m * C + j];
        for (int64_t k = j * c; k < (j + 1) * c; k += 32) {
          const __m512i xv = _mm512_loadu_si512((const void*)(xr + k));
          const uint8_t* wk = wb + 2 * k;
          a0 = dot32_u4(a0, xv, wk, shifts, mask);
          a1 = dot32_u4(a1, xv, wk + 16, shifts, mask);
          a2 = dot32_u4(a2, xv, wk + 32, shifts, mask);
          a3 = dot32_u4(a3, xv, wk + 48, shifts, mask);
        }
        const float sx = xs[m * C + j];
        const int64_t g = j / per_group;
        t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(sx * s[r[0] * G + g]), t0);
        t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(sx * s[r[1] * G + g]), t1);
        t2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a2), _mm512_set1_ps(sx * s[r[2] * G + g]), t2);
        t3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a3), _mm512_set1_ps(sx * s[r[3] * G + g]), t3);
        const float ox = (float)offset * xsum * sx;
        c0 += ox * s[r[0] * G + g];
        c1 += ox * s[r[1] * G + g];
        c2 += ox * s[r[2] * G + g];
        c3 += ox * s[r[3] * G + g];
      }
      const float out[4] = {_mm512_reduce_add_ps(t0) - c0, _mm512_reduce_add_ps(t1) - c1,
                            _mm512_reduce_add_ps(t2) - c2, _mm512_reduce_add_ps(t3) - c3};
      for (int i = 0; i < 4 && b * 4 + i < N; ++i) y[m * N + b * 4 + i] = out[i];
    }
  }
  return 0;
}
"""

_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp", "-shared", "-fPIC"]
MAX_CHUNK = 128  # activation features per int16 scale (exact in int32 up to 512: 512 · 32767 · 127 < 2^31)


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
    if not {"avx512f", "avx512bw", "avx512vl"} <= _cpu_flags():
        return None, "the CPU has no AVX-512 (F, BW, VL)"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) to build it"
    flags = [*_FLAGS, *(["-mavx512vnni"] if "avx512_vnni" in _cpu_flags() else [])]
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
    fn = lib.ms_int8_gemv
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    fn4 = lib.ms_int4_gemv
    fn4.restype = ctypes.c_int
    fn4.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_int, ctypes.c_int]
    return lib, None


def unavailable() -> str | None:
    """None when the kernel can run here, else the one-line reason it cannot."""
    return _library()[1]


def chunk_size(k: int, group: int) -> int | None:
    """Features per activation scale: the largest multiple of 32 up to `MAX_CHUNK` dividing the group
    (so an outlier feature costs precision only within its own chunk); None when none exists."""
    if k % group:
        return None
    for c in range(min(group, MAX_CHUNK) // 32 * 32, 0, -32):
        if group % c == 0:
            return c
    return None


def shape_problem(k: int, group: int) -> str | None:
    """Why a layer of `k` input features in groups of `group` cannot use the kernel (None: it can)."""
    if chunk_size(k, group) is None:
        return f"our AVX-512 kernel needs the group size ({group}) divisible by 32 and dividing in_features ({k})"
    return None


def int8_gemv(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """x (M × K, float32, CPU) · dequant(w)ᵀ with `packed` = `pack_int8_rows(w)` (w int8 N × K) and
    scales float32 (N × K/group)."""
    return _gemv("int8", x, packed, scales, group)


def _gemv(
    kind: str, x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int, *extra: int
) -> torch.Tensor:
    """Check the operands of the `kind` ("int8" / "int4") kernel, give it its buffers, and call it."""
    lib, why = _library()
    if lib is None:
        raise RuntimeError(f"the {kind} GEMV kernel is unavailable: {why}")
    m, k = x.shape
    n = scales.shape[0]
    code_dtype, columns = (torch.int8, k) if kind == "int8" else (torch.uint8, k // 2)
    if x.dtype != torch.float32 or packed.dtype != code_dtype or scales.dtype != torch.float32:
        raise TypeError(f"{kind}_gemv takes float32 x, {code_dtype} packed codes and float32 scales")
    if x.device.type != "cpu" or packed.shape != (n + (-n % 4), columns) or scales.shape != (n, k // group):
        raise ValueError(
            f"{kind}_gemv: shapes x {tuple(x.shape)}, packed {tuple(packed.shape)}, scales {tuple(scales.shape)}"
        )
    c = chunk_size(k, group)
    if c is None:
        raise ValueError(shape_problem(k, group))
    x, packed, scales = x.contiguous(), packed.contiguous(), scales.contiguous()
    y = torch.empty(m, n, dtype=torch.float32)
    xq = torch.empty(m, k, dtype=torch.int16)
    # activation scales per chunk (int4 also their chunk sums, for the offset term)
    xs = torch.empty(1 if kind == "int8" else 2, m, k // c, dtype=torch.float32)
    fn = lib.ms_int8_gemv if kind == "int8" else lib.ms_int4_gemv
    code = fn(x.data_ptr(), packed.data_ptr(), scales.data_ptr(), y.data_ptr(), xq.data_ptr(), xs.data_ptr(),
              m, n, k, group, c, *extra, torch.get_num_threads())  # fmt: skip
    if code:
        raise ValueError(shape_problem(k, group) or f"{kind}_gemv refused the shapes")
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
    """The kernel's int8 layout from codes (N × K, int8, K % 32 == 0): 4-row blocks, 32 features of
    each row in turn (zero rows pad N to a multiple of 4)."""
    return _interleave(codes.to(torch.int8), 32)


def unpack_int8_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int8_rows`: the N × K int8 codes."""
    return _deinterleave(packed, 32, n)


def pack_int4_rows(nibbles: torch.Tensor) -> torch.Tensor:
    """The kernel's int4 layout from nibbles (N × K, uint8 in [0, 15], K % 32 == 0): per row and 32
    features, byte j holds feature j (low nibble) and j + 16 (high); rows in 4-row blocks as for int8."""
    n, k = nibbles.shape
    b = nibbles.to(torch.uint8).view(n, k // 32, 2, 16)
    return _interleave((b[:, :, 0] | (b[:, :, 1] << 4)).reshape(n, k // 2), 16)


def unpack_int4_rows(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_int4_rows`: nibbles (N × K, uint8)."""
    rows = _deinterleave(packed, 16, n)
    b = rows.view(n, rows.shape[1] // 16, 1, 16)
    return torch.cat((b & 0x0F, b >> 4), dim=2).reshape(n, 2 * rows.shape[1])


def int4_gemv(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group: int, offset: int
) -> torch.Tensor:
    """x (M × K, float32) · ((nibbles - offset) · s)ᵀ with `packed` from `pack_int4_rows` (N × K/2 uint8)
    and scales float32 (N × K/group); `offset` is 8 for symmetric codes, 0 for zero-point codes."""
    return _gemv("int4", x, packed, scales, group, int(offset))
