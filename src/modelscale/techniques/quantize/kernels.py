"""Execution paths of a weight-only layer: ATen's packed int8/int4 kernels, a cached float weight, dequantize.

A path is a compute recipe for y = x · Ŵᵀ (Ŵ = (q - z) · s, the layer's dequantized weight) plus the
runtime tensors it reads, prepared once from the layer's codes (its *layout*):

    int8_mm_<dt>      aten._weight_int8pack_mm(x_dt, q_int8, s) per group, summed in float32;
                      asymmetric codes are shifted to int8 (q - 128) and the zero term is one small
                      matmul:  y = Σ_g s_g · (q_g - 128)·x_g  -  Σ_k∈g x_k · s_g · (z_g - 128)
    int8_int4x2_<dt>  int8 codes through the int4 CPU kernel: u = q + 128 (or the uint8 code) splits into
                      nibbles u = 16·h + l, and one call over [x, x] against [h | l] with per-group
                      (scale, offset) = (16·s, s·(136 - z)) for h and (s, 0) for l gives
                      16·s·(h - 8) + s·(l - 8) + s·(136 - z) = s·(u - z) (same bytes as int8)
    int4_cpu_<dt>     aten._weight_int4pack_mm_for_cpu(x_dt, packed, g, [s, (8 - z)·s]) (ATen computes
                      (q - 8)·s + m per group, so an integer zero point z becomes m = (8 - z)·s)
    int4_cuda_bf16    aten._weight_int4pack_mm (tinygemm) with the same scales-and-zeros, on CUDA
    int8_avx512       our AVX-512 VNNI kernel (`native_gemv`): unsigned codes u = q + 128 streamed once
                      in 4-row blocks, activations as 16-bit integers per chunk of ≤ 256 features
                      split into two signed bytes (relative error ~5e-5, below bf16's ~2e-3), exact
                      int32 sums minus 128·Σx; the zero term as for int8_mm; groups of 64k
    int4_avx512       the same kernel for int4: per 64 features 32 bytes (byte j holds feature j and
                      j + 32), nibbles unpacked in registers; symmetric codes' offset 8 subtracted
                      there, a zero point as one small matmul:  y = Σ s·q·x - Σ_g x_g · s_g·z_g
    float             F.linear / F.conv2d with the dequantized weight kept in float (one float copy)
    dequant           dequantize on every call, then the float op (the fallback; no runtime tensors)

`<dt>` is the activation dtype the kernel computes in (bf16, fp16, fp32); outputs are cast back to the
input's dtype. Every kernel is feature-detected (the ops and their signatures changed across torch
versions) and checked against the float32 reference on the layer's own codes before it may be chosen
(`check_path`); a layout that can give the codes back exactly (`Layout.codes`) lets the layer drop its
canonical copy, so one copy of the weights stays resident.

Example::

    paths, skipped = candidate_paths(layer, torch.device("cpu"))
    layout = build_layout(layer, paths[0].layout, torch.device("cpu"))
    problem = check_path(layer, paths[0], layout)        # None: agrees with the reference
    y = layout.run(x.reshape(-1, layer.in_features), paths[0].dtype)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

INT4_KERNEL_GROUPS = (32, 64, 128, 256)
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_CPU_INT4_BLOCK_N = 64  # rows per block of ATen's AVX512 int4 CPU layout (checked, never assumed)


@dataclass(frozen=True)
class Path:
    """One way to compute the layer: `layout` names the runtime tensors, `dtype` the activation dtype."""

    name: str
    layout: str  # "int8", "int4_cpu", "int4_cuda", "float" or "canonical" (dequant)
    dtype: torch.dtype | None = None

    @property
    def integer_kernel(self) -> bool:
        return self.layout.startswith("int")


DEQUANT = Path("dequant", "canonical")
NATIVE = ("int8_native", "int4_native")  # our kernels: float32 in and out, bias added inside
FLOAT = Path("float", "float")


@dataclass
class Layout:
    """Runtime tensors of one layout, prepared once; `run(x2d, dtype)` returns float32 (rows × out)."""

    kind: str
    tensors: dict[str, Any] = field(default_factory=dict)
    group: int = 0
    invertible: bool = False  # `codes()` gives the layer's codes back exactly

    def nbytes(self) -> int:
        seen, total = set(), 0
        for t in _flat_tensors(self.tensors):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    def run(self, x2d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        t = self.tensors
        if self.kind == "int8":
            return _int8_run(t, x2d, dtype)
        if self.kind == "int4_cpu":
            sz = t["scales_and_zeros"][dtype]
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d.to(dtype), t["packed"], self.group, sz)
        if self.kind == "int8_int4x2":
            xd = x2d.to(dtype)
            sz = t["scales_and_zeros"][dtype]
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                torch.cat((xd, xd), 1), t["packed"], self.group, sz
            )
        if self.kind in NATIVE:
            return self.run_native(x2d.to(torch.float32))
        if self.kind == "int4_cuda":
            sz = t["scales_and_zeros"][dtype]
            return torch.ops.aten._weight_int4pack_mm(x2d.to(dtype), t["packed"], self.group, sz)
        raise ValueError(f"layout {self.kind} has no integer run")  # float layouts run in the layer

    def run_native(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Our kernel on float32 x (..., in) → (..., out) float32, zero term and `bias` added inside it."""
        t = self.tensors
        codes = t["weight"] if self.kind == "int8_native" else t["packed"]
        plan = t.get("plan")
        if plan is None or plan.tensors[0] is not codes:  # prepared once per layout
            from modelscale.techniques.quantize import native_gemv

            bits, offset = (8, 128) if self.kind == "int8_native" else (4, t["offset"])
            plan = native_gemv.Plan(bits, codes, t["scales_f32"], self.group, offset, t.get("zero_scaled"),
                                    t.get("activation_bits", 16))  # fmt: skip
            t["plan"] = plan
        return plan(x, bias)

    def keep_dtypes(self, dtypes: set) -> None:
        """Drop the per-dtype scales no chosen path reads."""
        for name in ("scales", "scales_and_zeros"):
            if name in self.tensors:
                self.tensors[name] = {dt: v for dt, v in self.tensors[name].items() if dt in dtypes}

    def codes(self) -> torch.Tensor:
        """The codes as stored in the layer's canonical form: int8/uint8 (out × in) or int4 nibbles (uint8)."""
        t = self.tensors
        if self.kind == "int8_native":
            from modelscale.techniques.quantize.native_gemv import unpack_int8_rows

            w = unpack_int8_rows(t["weight"], t["rows"])
            return (w.to(torch.int16) + 128).to(torch.uint8) if t["asymmetric"] else w
        if self.kind == "int8":
            w = t["weight"]
            w = w.transpose(0, 1).reshape(w.shape[1], -1) if w.dim() == 3 else w
            return (w.to(torch.int16) + 128).to(torch.uint8) if t["asymmetric"] else w
        if self.kind == "int4_cpu" and self.invertible:
            return unpack_cpu_int4_layout(t["packed"])
        if self.kind == "int4_native":
            from modelscale.techniques.quantize.native_gemv import unpack_int4_rows

            return unpack_int4_rows(t["packed"], t["rows"])
        if self.kind == "int8_int4x2" and self.invertible:
            nib = unpack_cpu_int4_layout(t["packed"]).to(torch.int16)
            k = nib.shape[1] // 2
            u = nib[:, :k] * 16 + nib[:, k:]
            return u.to(torch.uint8) if t["asymmetric"] else (u - 128).to(torch.int8)
        raise ValueError(f"layout {self.kind} cannot give its codes back")


def _flat_tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _flat_tensors(v)


# --- feature detection ------------------------------------------------------------------------------
def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


@functools.cache
def fast_cpu_float16() -> bool:
    """Whether this CPU has native float16 arithmetic (AVX512-FP16 or AMX-FP16); else fp16 runs emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_fp16" in flags or "amx_fp16" in flags


def activation_dtypes(device: torch.device, weight_dtype: torch.dtype) -> list[torch.dtype]:
    """Activation dtypes worth trying: bf16 everywhere; fp16 where fast (CUDA, fp16 CPUs, fp16 models); fp32."""
    dtypes = [torch.bfloat16]
    if device.type == "cuda" or fast_cpu_float16() or weight_dtype == torch.float16:
        dtypes.append(torch.float16)
    dtypes.append(torch.float32)
    return dtypes


def candidate_paths(layer: Any, device: torch.device) -> tuple[list[Path], dict[str, str]]:
    """Integer-kernel paths that may run `layer` on `device`, and why the others cannot (family → reason)."""
    paths: list[Path] = []
    skipped: dict[str, str] = {}
    if layer.geometry["kind"] != "linear":
        return paths, {"integer kernels": "only Linear layers have integer kernels"}
    k, n, g = layer.in_features, layer.out_features, layer.group
    if k % g:
        return paths, {"integer kernels": f"in_features {k} is not a multiple of the group size {g}"}
    dtypes = activation_dtypes(device, layer.weight_dtype)
    if layer.bits == 8:
        if not _has_op("_weight_int8pack_mm"):
            skipped["int8_mm"] = "this torch has no aten._weight_int8pack_mm"
        else:
            # ATen's CPU kernel reads reduced-precision activations in blocks along K: with bf16, a group
            # length that is not a multiple of 16 crashes the process (segfault) once there are two or
            # more rows (K = 8, 24, 40 measured here), so never offer it.
            unsafe = [dt for dt in dtypes if dt != torch.float32 and device.type == "cpu" and g % 16]
            for dt in unsafe:
                skipped[f"int8_mm_{DTYPE_NAMES[dt]}"] = f"ATen's int8 kernel needs K % 16 == 0 here, K = {g}"
            paths += [Path(f"int8_mm_{DTYPE_NAMES[dt]}", "int8", dt) for dt in dtypes if dt not in unsafe]
        native = _native_problem(k, g, device)
        if native:
            skipped["int8_avx512"] = native
        else:
            paths.append(Path(f"int8_avx512{_a8(layer)}", "int8_native", torch.float32))
        problem = _int4_cpu_problem(n) if device.type == "cpu" else "the int4 CPU kernel runs on CPU only"
        if problem is None and int8_as_int4_group(layer) is None:
            problem = f"no int4 kernel group size in {INT4_KERNEL_GROUPS} fits group {g} of {k} columns"
        if problem:
            skipped["int8_int4x2"] = problem
        else:  # float32 activations make the int4 kernel slow everywhere measured: low precision only
            low = [dt for dt in dtypes if dt != torch.float32]
            paths += [Path(f"int8_int4x2_{DTYPE_NAMES[dt]}", "int8_int4x2", dt) for dt in low]
        return paths, skipped
    native = _native_problem(k, g, device)
    if native:
        skipped["int4_avx512"] = native
    else:
        paths.append(Path(f"int4_avx512{_a8(layer)}", "int4_native", torch.float32))
    if g not in INT4_KERNEL_GROUPS:
        skipped["int4 kernels"] = f"ATen's int4 kernels need group_size in {INT4_KERNEL_GROUPS}, not {g}"
        return paths, skipped
    if device.type == "cpu":
        problem = _int4_cpu_problem(n)
        if problem:
            skipped["int4_cpu"] = problem
        else:
            paths += [Path(f"int4_cpu_{DTYPE_NAMES[dt]}", "int4_cpu", dt) for dt in dtypes]
    elif device.type == "cuda":
        if not (_has_op("_weight_int4pack_mm") and _has_op("_convert_weight_to_int4pack")):
            skipped["int4_cuda"] = "this torch has no aten._weight_int4pack_mm"
        elif n % 8 or k % 32:
            skipped["int4_cuda"] = "tinygemm needs out_features % 8 == 0 and in_features % 32 == 0"
        else:
            paths.append(Path("int4_cuda_bf16", "int4_cuda", torch.bfloat16))
    else:
        skipped["int4"] = f"no int4 kernel on {device.type}"
    return paths, skipped


def activation_bits(layer: Any) -> int:
    """Bits of our kernel's activations for `layer`: 16, or 8 when its config asked (activation_bits=8)."""
    return getattr(layer, "activation_bits", 16)


def _a8(layer: Any) -> str:
    """The suffix of our kernel's path name when it takes 8-bit activations."""
    return "_a8" if activation_bits(layer) == 8 else ""


def _native_problem(k: int, g: int, device: torch.device) -> str | None:
    if device.type != "cpu":
        return "our AVX-512 kernel runs on CPU only"
    from modelscale.techniques.quantize import native_gemv

    return native_gemv.shape_problem(k, g) or native_gemv.unavailable()


def _int4_cpu_problem(n: int) -> str | None:
    if not (_has_op("_weight_int4pack_mm_for_cpu") and _has_op("_convert_weight_to_int4pack_for_cpu")):
        return "this torch has no aten._weight_int4pack_mm_for_cpu"
    if n % 16:
        return f"the int4 CPU kernel needs out_features divisible by 16, not {n}"
    return None


def int8_as_int4_group(layer: Any) -> int | None:
    """The int4 kernel's group size for an int8 layer: its own group, or for one group per row the
    largest kernel group dividing in_features (the row's scale repeated); None if neither fits."""
    k, g = layer.in_features, layer.group
    if g in INT4_KERNEL_GROUPS and k % g == 0:
        return g
    if g == k:
        return next((kg for kg in sorted(INT4_KERNEL_GROUPS, reverse=True) if k % kg == 0), None)
    return None


# --- building layouts -------------------------------------------------------------------------------
def build_layout(layer: Any, kind: str, device: torch.device) -> Layout:
    """Runtime tensors of layout `kind` from `layer`'s codes and scales (raises RuntimeError if ATen refuses)."""
    codes, scale, zero = layer.codes(), layer.scale.to(device, torch.float32), layer.zero_point
    zero = None if zero is None else zero.to(device, torch.float32)
    n, k, g = layer.out_features, layer.in_features, layer.group
    groups = k // g
    if kind == "int8":
        asymmetric = not layer.symmetric
        w = (codes - 128 if asymmetric else codes).to(device, torch.int8)
        if groups > 1:  # one contiguous (out × g) block per group
            w = w.view(n, groups, g).transpose(0, 1).contiguous()
        elif not asymmetric and layer.qweight is not None and layer.qweight.device == device:
            w = layer.qweight  # the stored int8 codes themselves: no second copy
        scales = {dt: scale.t().contiguous().to(dt) for dt in (torch.bfloat16, torch.float16, torch.float32)}
        t: dict[str, Any] = {"weight": w, "scales": scales, "asymmetric": asymmetric, "groups": groups}
        if asymmetric:
            t["zero_term"] = (scale * (zero - 128.0)).t().contiguous()  # groups × out, float32
        return Layout("int8", t, group=g, invertible=True)
    if kind == "int8_native":
        from modelscale.techniques.quantize.native_gemv import pack_int8_rows

        asymmetric = not layer.symmetric
        w = pack_int8_rows((codes - 128 if asymmetric else codes).to(device, torch.int8).view(n, k))
        t = {"weight": w, "scales_f32": scale.view(n, groups).contiguous(), "asymmetric": asymmetric,
             "groups": groups, "rows": n, "activation_bits": activation_bits(layer)}  # fmt: skip
        if asymmetric:  # out × groups, float32: the kernel takes Σ_g s·(z - 128) · Σ x_g off
            t["zero_scaled"] = (scale * (zero - 128.0)).view(n, groups).contiguous()
        return Layout(kind, t, group=g, invertible=True)
    if kind == "int4_native":
        from modelscale.techniques.quantize.native_gemv import pack_int4_rows

        nibbles = (codes + 8 if layer.symmetric else codes).to(device, torch.uint8)
        t = {"packed": pack_int4_rows(nibbles), "scales_f32": scale.view(n, groups).contiguous(),
             "offset": 8 if layer.symmetric else 0, "groups": groups, "rows": n,
             "activation_bits": activation_bits(layer)}  # fmt: skip
        if not layer.symmetric:  # out × groups, float32
            t["zero_scaled"] = (scale * zero).view(n, groups).contiguous()
        return Layout(kind, t, group=g, invertible=True)
    if kind == "int8_int4x2":
        kg = int8_as_int4_group(layer)
        asymmetric = not layer.symmetric
        u = (codes if asymmetric else codes + 128).to(device)  # unsigned code in [0, 255]
        nibbles = torch.cat((u >> 4, u & 15), dim=1).to(torch.uint8)  # out × 2·in: [h | l]
        reps = k // kg // groups  # kernel groups per stored group (1, or k / kg for one group per row)
        s_k = scale.repeat_interleave(reps, dim=1)
        z_k = torch.full_like(s_k, 128.0) if zero is None else zero.repeat_interleave(reps, dim=1)
        hi = torch.stack((16.0 * s_k, s_k * (136.0 - z_k)), dim=-1)
        lo = torch.stack((s_k, torch.zeros_like(s_k)), dim=-1)
        sz = torch.cat((hi, lo), dim=1).transpose(0, 1).contiguous()  # 2·groups × out × 2
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles.to(torch.int32), 1)
        own = pack_cpu_int4_layout(nibbles)
        invertible = own is not None and own.shape == packed.shape and torch.equal(own, packed)
        t = {"packed": packed, "asymmetric": asymmetric,
             "scales_and_zeros": {dt: sz.to(dt) for dt in (torch.bfloat16, torch.float16)}}  # fmt: skip
        return Layout(kind, t, group=kg, invertible=invertible)
    if kind in ("int4_cpu", "int4_cuda"):
        nibbles = (codes + 8 if layer.symmetric else codes).to(device)
        z = 8.0 if zero is None else zero
        sz = torch.stack((scale, (8.0 - z) * scale), dim=-1).transpose(0, 1).contiguous()  # groups × out × 2
        if kind == "int4_cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles.to(torch.int32), 1)
            own = pack_cpu_int4_layout(nibbles.to(torch.uint8))
            invertible = own is not None and own.shape == packed.shape and torch.equal(own, packed)
            dtypes = (torch.bfloat16, torch.float16, torch.float32)
        else:
            packed = _convert_int4_cuda(nibbles.to(torch.uint8), k)
            invertible, dtypes = False, (torch.bfloat16,)
        t = {"packed": packed, "scales_and_zeros": {dt: sz.to(dt) for dt in dtypes}}
        return Layout(kind, t, group=g, invertible=invertible)
    if kind == "float":
        t = {"weight": layer.dequantize().to(device, layer.weight_dtype)}
        geo = layer.geometry
        if geo["kind"] == "conv2d":  # F.conv2d's arguments, built once rather than on every call
            padding = geo["padding"] if isinstance(geo["padding"], str) else tuple(geo["padding"])
            t["conv_args"] = (tuple(geo["stride"]), padding, tuple(geo["dilation"]), geo["groups"])
        return Layout("float", t)
    raise ValueError(f"unknown layout {kind!r}")


def _convert_int4_cuda(nibbles: torch.Tensor, k: int) -> torch.Tensor:
    """tinygemm's layout: torch >= 2.5 takes uint8 (out × in/2, even column in the high nibble)."""
    packed_in = (nibbles[:, ::2] << 4 | nibbles[:, 1::2]).to(torch.uint8)
    last: Exception | None = None
    for inner_k_tiles in (8, 4, 2):
        if k % (inner_k_tiles * 16):
            continue
        try:
            return torch.ops.aten._convert_weight_to_int4pack(packed_in, inner_k_tiles)
        except (RuntimeError, NotImplementedError) as exc:
            last = exc
    raise RuntimeError(f"tinygemm refused this layer: {last}")


def _int8_run(t: dict[str, Any], x2d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    w, s, groups = t["weight"], t["scales"][dtype], t["groups"]
    xd = x2d.to(dtype)
    mm = torch.ops.aten._weight_int8pack_mm
    if groups == 1:
        y = mm(xd, w, s[0]).to(torch.float32)
    else:
        g = w.shape[2]
        xg = xd.view(xd.shape[0], groups, g)
        y = mm(xg[:, 0].contiguous(), w[0], s[0]).to(torch.float32)
        for i in range(1, groups):
            y += mm(xg[:, i].contiguous(), w[i], s[i])
    if t["asymmetric"]:
        sums = x2d.to(torch.float32).view(x2d.shape[0], groups, -1).sum(-1)  # rows × groups
        y -= sums @ t["zero_term"]
    return y


# --- ATen's CPU int4 layout -------------------------------------------------------------------------
def pack_cpu_int4_layout(nibbles: torch.Tensor) -> torch.Tensor | None:
    """Our reading of ATen's AVX512 int4 CPU layout (None where it does not apply); callers compare it
    with ATen's own packing before relying on it. Rows come in blocks of 64; within a block, byte
    (k, j) holds row j of column k in its low nibble and row j + 32 in its high nibble."""
    n, k = nibbles.shape
    if n % _CPU_INT4_BLOCK_N or k % 2:
        return None
    half = _CPU_INT4_BLOCK_N // 2
    b = nibbles.view(n // _CPU_INT4_BLOCK_N, 2, half, k)
    return (b[:, 0] | (b[:, 1] << 4)).transpose(1, 2).contiguous().view(n, k // 2)


def unpack_cpu_int4_layout(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_cpu_int4_layout`: nibbles (out × in, uint8 in [0, 15])."""
    n, half_k = packed.shape
    k, half = 2 * half_k, _CPU_INT4_BLOCK_N // 2
    b = packed.view(n // _CPU_INT4_BLOCK_N, k, half).transpose(1, 2)
    return torch.stack((b & 0x0F, b >> 4), dim=1).reshape(n, k)


# --- checking a path against the reference ------------------------------------------------------------
def reference_rows(k: int, device: torch.device, rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(0)).to(device)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-30))


def reference_output(layer: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference rows x, float32 x · Ŵᵀ) for `check_path`."""
    x = reference_rows(layer.in_features, device)
    return x, x @ layer.dequantize().to(device, torch.float32).view(layer.out_features, -1).t()


def check_path(
    layer: Any,
    path: Path,
    layout: Layout,
    *,
    quant_error: float | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> str | None:
    """None if `path` computes the layer's reference output within tolerance, else why not.

    Tolerance (relative, Frobenius): 1e-3 for float32 activations; for bf16 / fp16 activations (and our
    kernel's 8-bit ones) the larger of 1e-2 / 4e-3 (bf16 keeps 8 significant bits: ~3e-3 is typical) and half the quantization
    error itself (‖x·Ŵᵀ - x·Wᵀ‖ / ‖x·Wᵀ‖ when the float weight is known). A wrong layout or sign
    gives errors of order 1.
    """
    x, want = reference if reference is not None else reference_output(layer, _layout_device(layout))
    try:
        got = layout.run(x, path.dtype)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return f"{path.name} failed: {str(exc).strip().splitlines()[0][:120]}"
    if got.shape != want.shape:
        return f"{path.name} returned shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    err = relative_error(got, want)
    a8 = layout.tensors.get("activation_bits") == 8  # our kernel with one-byte activations: bf16's floor
    floor = 1e-2 if a8 else {torch.float32: 1e-3, torch.float16: 4e-3}.get(path.dtype, 1e-2)  # bf16: 8 bits
    tol = floor if path.dtype == torch.float32 and not a8 else max(floor, 0.5 * (quant_error or 0.0))
    if not err <= tol:
        return f"{path.name} disagrees with the reference (relative error {err:.2g} > {tol:.2g})"
    return None


def _layout_device(layout: Layout) -> torch.device:
    return next(_flat_tensors(layout.tensors)).device
