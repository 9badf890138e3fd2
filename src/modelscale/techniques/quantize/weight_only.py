"""Weight-only quantization: int8 or int4 weights with group-wise scales; activations stay float.

Frantar et al., "GPTQ" (2023) and Lin et al., "AWQ" (2024) use this storage format (here with plain
round-to-nearest, no calibration). Each output row of W (a Conv2d's flattened in·kh·kw) is split into
groups of g values; each group has its own scale s (and integer zero point z when asymmetric):

    symmetric:   W_q = clamp(round(W / s), -Q, Q),        s = max|W| / Q,   Q = 2^(bits-1) - 1
    asymmetric:  W_q = clamp(round(W / s) + z, 0, 2^bits - 1),  s = (max - min) / (2^bits - 1)
    W ≈ (W_q - z) · s

int4 codes are packed two per byte into a uint8 buffer. Stored bytes per weight: bits/8 plus, per group,
one scale (scale_dtype) and one uint8 zero point if asymmetric — int4 g32 asymmetric with fp32 scales
is 21 bytes per 32 weights (6.1x smaller than fp32).

Execution (kernel="auto", the default): each Linear is prepared once, at apply/load time, for the
paths in `kernels.py` — ATen's packed `_weight_int8pack_mm` (int8, any group size, per group) and
`_weight_int4pack_mm_for_cpu` (int4, g in 32/64/128/256) with bf16 (fp16 where fast, fp32) activations,
our AVX-512 VNNI GEMV with 16-bit activations (8 with activation_bits=8: faster, ~0.7% error;
`native_gemv.py`, int8/int4, groups of 64·k), tinygemm
`_weight_int4pack_mm` on CUDA, a float copy of the dequantized weight, or dequantize-per-call
(the fallback) — and `kernel_choice.py` times them against the float op on the layer's own shape at each
of `batches` rows, paired and interleaved, cached by shape, rows, dtype, device and threads. A call uses
the fastest path measured for the nearest row count; with prefer="speed" a layer is never left slower
than its float original (a float copy runs it where no integer kernel won), prefer="size" keeps only
integer weights resident. The record lists each layer's paths, ratios and resident bytes.
kernel="torch" restricts the choice to the ATen kernels, kernel="dequant" always dequantizes.

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.weight_only import WeightOnlyConfig
    result = apply(model, WeightOnlyConfig(bits=4, group_size=32, symmetric=False))
    print(result.record.summary["ratio"])          # float32 bytes / stored bytes of the quantized layers
    print(result.record.layers[0]["paths"])        # per batch: chosen path and its measured ratio
    logits = result.model(x)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import check_choice
from modelscale.core.registry import register
from modelscale.techniques.quantize import kernel_choice, kernels
from modelscale.techniques.quantize.common import (
    SCALE_DTYPES,
    QuantizedLayer,
    dequantize_groups,
    group_layout,
    pack_int4,
    parent_reads_weight,
    quantize_groups,
    replace_module,
    restore_layers,
    select_layers,
    size_summary,
    unpack_int4,
)
from modelscale.techniques.quantize.common import layer_row as _layer_row
from modelscale.techniques.quantize.kernels import INT4_KERNEL_GROUPS, NATIVE, Path  # noqa: F401 - re-exported
from modelscale.techniques.quantize.weight_only_config import KERNELS, WeightOnlyConfig  # noqa: F401 - re-exported

RUNTIME = "runtime_"  # prefix of the non-persistent buffers holding a chosen path's tensors


class WeightOnlyLayer(QuantizedLayer):
    """Linear/Conv2d with int8 or packed int4 `qweight`, `scale` (out × groups) and maybe `zero_point`.

    `kernel` sets how it runs ("auto", "torch", "dequant"; see the module docstring); reading `kernel`
    gives what runs: "torch" (an ATen integer kernel at some batch), "float" or "dequant". `choices`
    lists, per timed batch, the chosen path and its measured ratio against the float op.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        bits: int,
        group_size: int,
        symmetric: bool,
        scale_dtype: str = "float32",
        kernel: str = "dequant",
        prefer: str = "speed",
        batches: tuple[int, ...] = (1, 8, 32),
        tune_ms: float = 150.0,
        cache: kernel_choice.ChoiceCache | None = None,
        activation_bits: int = 16,
    ) -> None:
        super().__init__(module)
        w2d = module.weight.detach().reshape(self.out_features, -1)
        q, scale, zero = quantize_groups(
            w2d, bits=bits, group_size=group_size, symmetric=symmetric, scale_dtype=SCALE_DTYPES[scale_dtype]
        )
        self.bits, self.symmetric = bits, symmetric
        self.group_size = group_size  # as configured (0 = per output channel)
        self.group = group_layout(self.in_features, group_size)[0]
        if bits == 8:
            stored = q.to(torch.int8) if symmetric else q.to(torch.uint8)
        else:
            nibbles = q + 8 if symmetric else q
            if nibbles.shape[1] % 2:  # odd row length: one spare nibble per row
                nibbles = F.pad(nibbles, (0, 1))
            stored = pack_int4(nibbles)
        self.register_buffer("qweight", stored)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero)  # None (not saved) when symmetric
        self.format = f"int{bits}_{'sym' if symmetric else 'asym'}_g{self.group}"
        self.prefer, self.batches, self.tune_ms = prefer, tuple(sorted(set(batches))), float(tune_ms)
        self.activation_bits = activation_bits  # of our VNNI kernel's activations: 16 or 8
        self.cache = cache
        self.mode = "dequant"
        self.choices: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self._layouts: dict[str, kernels.Layout] = {}
        self._route: list[tuple[int, Path]] = []  # (rows, path), by rows
        self._bounds: list[float] = []
        self._device: torch.device | None = None
        self._fast: tuple | None = None
        self._steps: tuple | None = None
        self._quant_error: float | None = None  # ‖x·Ŵᵀ - x·Wᵀ‖ / ‖x·Wᵀ‖ on reference rows, when W was known
        if kernel != "dequant":
            self.set_kernel(kernel, float_weight=w2d)

    # --- reference path ---------------------------------------------------------------------------
    def stored_qweight(self) -> torch.Tensor:
        """The codes in their saved layout (rebuilt from the runtime layout when only that is resident)."""
        if "qweight" in self._buffers:
            return self._buffers["qweight"]
        layout = next(lay for lay in self._layouts.values() if lay.invertible)
        codes = layout.codes()
        return codes if self.bits == 8 else pack_int4(codes)

    def __getattr__(self, name: str) -> Any:
        if name == "qweight" and "_layouts" in self.__dict__ and "qweight" not in self._buffers:
            return self.stored_qweight()
        return super().__getattr__(name)

    def codes(self) -> torch.Tensor:
        """The integer codes (out × in) as int16: signed if symmetric, else in [0, 2^bits - 1]."""
        stored = self.stored_qweight()
        if self.bits == 8:
            return stored.to(torch.int16)
        q = unpack_int4(stored)[:, : self.in_features].to(torch.int16)
        return q - 8 if self.symmetric else q

    def dequantize(self) -> torch.Tensor:
        stored = self.stored_qweight()
        if self.bits == 8:
            q, zero = stored, self.zero_point
        else:  # nibbles; symmetric ones carry an offset of 8
            q = unpack_int4(stored)[:, : self.in_features]
            zero = 8 if self.symmetric else self.zero_point
        w = dequantize_groups(q, self.scale, zero, group_size=self.group)
        return w.view(self.geometry["weight_shape"])

    # --- choosing and preparing paths ---------------------------------------------------------------
    @property
    def kernel(self) -> str:
        """What runs: "torch" (an ATen integer kernel at some batch), "float" or "dequant"."""
        if any(p.integer_kernel for _, p in self._route):
            return "torch"
        return "float" if any(p.layout == "float" for _, p in self._route) else "dequant"

    @kernel.setter
    def kernel(self, mode: str) -> None:
        self.set_kernel(mode)

    def torch_kernel_problem(self) -> str | None:
        """Why no ATen integer kernel can run this layer on its device (None if one can and matches)."""
        device = self.scale.device
        paths, skipped = kernels.candidate_paths(self, device)
        built: dict[str, kernels.Layout] = {}
        for path in paths:
            try:
                layout = built.get(path.layout) or kernels.build_layout(self, path.layout, device)
            except (RuntimeError, NotImplementedError) as exc:
                skipped[path.name] = f"ATen refused the layer: {str(exc).splitlines()[0][:120]}"
                continue
            built[path.layout] = layout
            problem = kernels.check_path(self, path, layout)
            if problem is None:
                return None
            skipped[path.name] = problem
        return "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no ATen kernel for this layer"

    def set_kernel(self, mode: str, *, float_weight: torch.Tensor | None = None) -> None:
        """Choose this layer's path per batch by measurement (mode auto/torch) or dequantize (dequant)."""
        check_choice("kernel", mode, KERNELS)
        self._materialize()
        self.mode, self.choices, self.skipped = mode, [], {}
        self._layouts, self._route, self._device = {}, [], self.scale.device
        if mode == "dequant":
            self._set_route([(b, kernels.DEQUANT) for b in self.batches[:1]])
            return
        device = self._device
        options, layouts = self._usable_paths(device, float_weight)
        speed = mode == "auto" and self.prefer == "speed"
        if mode == "auto" or not options:
            options.append(kernels.DEQUANT)
        if self.geometry["kind"] != "linear":  # no integer kernel, no input shape to time: nothing to measure
            path = kernels.FLOAT if speed else options[0]
            self.choices = [{"batch": None, "path": path.name, "ratio": None,
                             "note": "not timed: a Conv2d has no integer kernel here"}]  # fmt: skip
            self._keep([(b, path) for b in self.batches[:1]], self._with_float(layouts, [(0, path)]))
            return
        measured = []
        dropped: dict[str, float] = {}
        for batch in self.batches:
            timed = [p for p in options if p.name not in dropped]
            timings = kernel_choice.measure_layer(self, batch, timed, layouts, device, self.cache)
            best = max(t.ratio for t in timings.values())
            for name, t in timings.items():  # far slower than float and than another quantized path here:
                if t.ratio * kernel_choice.SLOW_FACTOR < min(1.0, best):
                    dropped[name] = t.ratio  # not timed at larger batches
            if speed:  # the float copy runs the float op itself: not timed (a second float weight in the
                ref = next(iter(timings.values())).float_ms  # cache while timing would slow the reference)
                timings = {**timings, "float": kernel_choice.Timing(ref, ref, 1.0, 1.0, 1.0, 0)}
                timed = [*timed, kernels.FLOAT]
            measured.append((batch, timed, timings))
        route = self._route_from(measured)
        self._keep(route, self._with_float(layouts, route))

    def _with_float(self, layouts: dict, route: list[tuple[int, Path]]) -> dict:
        """`layouts` plus the float copy when the route uses it (built only then: it is 4 bytes a weight)."""
        if any(p.layout == "float" for _, p in route):
            layouts = {**layouts, "float": kernels.build_layout(self, "float", self._device)}
        return layouts

    def _route_from(self, measured: list) -> list[tuple[int, Path]]:
        """Per batch the pick of `kernel_choice.pick`; one integer layout for all batches, so one copy of
        the codes stays: the layout whose own picks (its paths or the float copy, batch by batch) give the
        best geometric-mean ratio over the batches."""
        picks = [(b, kernel_choice.pick(t, [p.name for p in timed])) for b, timed, t in measured]
        by_name = {p.name: p for _, timed, _ in measured for p in timed}
        layouts = {by_name[n].layout for _, n in picks if by_name[n].integer_kernel}
        if len(layouts) > 1:

            def with_only(kind: str) -> list[tuple[int, str]]:
                names = lambda timed: [p.name for p in timed if not p.integer_kernel or p.layout == kind]  # noqa: E731
                return [(b, kernel_choice.pick(t, names(timed))) for b, timed, t in measured]

            def score(kind: str) -> float:  # a batch that falls back to the float copy counts its ratio 1
                return sum(math.log(t[n].ratio) for (_, _, t), (_, n) in zip(measured, with_only(kind)))

            picks = with_only(max(sorted(layouts), key=score))
        self.choices = []
        for (batch, _, timings), (_, best) in zip(measured, picks):
            self.choices.append({"batch": batch, "path": best, **timings[best].to_dict(),
                                 "alternatives": {n: round(t.ratio, 4) for n, t in timings.items() if n != best}})  # fmt: skip
            if best == "float":
                self.choices[-1]["note"] = (
                    "the float op itself on a float copy of the dequantized weight (not timed)"
                )
        return [(b, by_name[n]) for b, n in picks]

    def _usable_paths(
        self, device: torch.device, float_weight: torch.Tensor | None
    ) -> tuple[list[Path], dict[str, kernels.Layout]]:
        paths, self.skipped = kernels.candidate_paths(self, device)
        if float_weight is not None and paths:
            x = kernels.reference_rows(self.in_features, device)
            want = x @ float_weight.to(device, torch.float32).t()
            got = x @ self.dequantize().to(device, torch.float32).view(self.out_features, -1).t()
            self._quant_error = kernels.relative_error(got, want)
        quant_error = self._quant_error
        layouts: dict[str, kernels.Layout] = {}
        usable = []
        reference = kernels.reference_output(self, device) if paths else None
        for path in paths:
            if path.layout not in layouts:
                try:
                    layouts[path.layout] = kernels.build_layout(self, path.layout, device)
                except (RuntimeError, NotImplementedError) as exc:
                    self.skipped[path.name] = f"ATen refused the layer: {str(exc).splitlines()[0][:120]}"
                    continue
            problem = kernels.check_path(
                self, path, layouts[path.layout], quant_error=quant_error, reference=reference
            )
            if problem is None:
                usable.append(path)
            else:
                self.skipped[path.name] = problem
        return usable, layouts

    def _keep(self, route: list[tuple[int, Path]], layouts: dict[str, kernels.Layout]) -> None:
        used = {p.layout for _, p in route}
        self._layouts = {k: v for k, v in layouts.items() if k in used}
        for lay in self._layouts.values():
            lay.keep_dtypes({p.dtype for _, p in route if p.layout == lay.kind})
        self._set_route(route)
        integer = [self._layouts[k] for k in used if k.startswith("int")]
        if integer and all(lay.invertible for lay in integer) and "canonical" not in used:
            del self._buffers["qweight"]  # one copy resident: the kernel's layout gives the codes back
        # runtime tensors are non-persistent buffers: memory reports count them, state dicts skip them
        for kind, lay in self._layouts.items():
            for i, t in enumerate(kernels._flat_tensors(lay.tensors)):
                self.register_buffer(f"{RUNTIME}{kind}_{i}", t, persistent=False)

    def _set_route(self, route: list[tuple[int, Path]]) -> None:
        self._route = sorted(route, key=lambda r: r[0])
        self._bounds = [math.sqrt(a * b) for (a, _), (b, _) in zip(self._route, self._route[1:])]
        paths = {p for _, p in self._route}
        self._fast = None
        if len(paths) == 1 and (path := paths.pop()).layout in self._layouts:
            self._fast = (self._device, path, self._layouts[path.layout], self.bias)
        # per batch bound: (largest rows it serves, path, its layout), looked up without module attributes
        self._steps = None
        if self._route and all(p.layout in self._layouts for _, p in self._route):
            bounds = [*self._bounds, math.inf]
            steps = tuple((b, p, self._layouts[p.layout]) for b, (_, p) in zip(bounds, self._route))
            self._steps = (self._device, steps, self.bias)

    def _materialize(self) -> None:
        """Put the codes back into the `qweight` buffer and drop the runtime buffers (before loading,
        moving or re-choosing)."""
        if "qweight" not in self._buffers:
            self._buffers["qweight"] = self.stored_qweight()
        for name in [n for n in self._buffers if n.startswith(RUNTIME)]:
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)

    def _rebuild(self) -> None:
        """Rebuild the runtime layouts from the (new) codes, keeping the chosen paths."""
        route, device = list(self._route), self._device
        layouts = {
            p.layout: kernels.build_layout(self, p.layout, device)
            for _, p in route
            if p.layout != "canonical"
        }
        self._keep(route, layouts)

    # --- nn.Module hooks: the saved layout is always `qweight` --------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if "qweight" not in self._buffers:
            destination[prefix + "qweight"] = self.stored_qweight()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        self._materialize()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self._route:
            self._rebuild()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._materialize()
        self._layouts = {}
        out = super()._apply(fn, *args, **kwargs)
        self.set_kernel(self.mode)  # re-chosen on the new device (from the cache when it is the same)
        return out

    def storage_bytes(self) -> int:
        """Bytes of what is saved (codes in their saved layout, scales, zero points, bias)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def resident_bytes(self) -> int:
        """Bytes this layer keeps in memory now: saved buffers still resident plus runtime layouts."""
        tensors = {id(t): t for t in [*self.buffers(recurse=False), *self.parameters(recurse=False)]}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    # --- forward ------------------------------------------------------------------------------------
    def _path_for(self, x: torch.Tensor) -> Path | None:
        if x.device != self._device or not self._route:
            return None
        rows = x.numel() // self.in_features
        for (_, path), bound in zip(self._route, self._bounds):
            if rows <= bound:
                return path
        return self._route[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self._fast  # (device, path, layout, bias) when one path serves every batch
        steps = self._steps
        if fast is not None and x.device == fast[0]:
            path, layout, bias = fast[1], fast[2], fast[3]
        elif steps is not None and x.device == steps[0]:  # a few µs less than the general lookup
            rows = x.numel() // self.in_features
            bias = steps[2]
            _, path, layout = next(step for step in steps[1] if rows <= step[0])  # the last bound is inf
        else:
            path = self._path_for(x)
            layout = None if path is None else self._layouts.get(path.layout)
            bias = self.bias
        if layout is not None and path.layout == "float":
            weight = layout.tensors["weight"]
            if x.dtype == weight.dtype:
                conv = layout.tensors.get("conv_args")
                return F.linear(x, weight, bias) if conv is None else F.conv2d(x, weight, bias, *conv)
            return self.float_forward(x, weight.to(x.dtype))
        f32 = x.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
        if (
            layout is not None and f32 and path.layout in NATIVE
        ):  # one call: no reshape, cast or bias op around it
            return layout.run_native(x, bias)
        if layout is not None and x.is_floating_point():
            lead = x.shape[:-1]
            y = layout.run(x.reshape(-1, self.in_features).contiguous(), path.dtype).to(x.dtype)
            if bias is not None:
                y += bias.to(x.dtype)
            return y.view(*lead, self.out_features)
        return self.float_forward(x, self.dequantize().to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"


def _layer(module: nn.Module, config: WeightOnlyConfig, name: str) -> WeightOnlyLayer:
    return WeightOnlyLayer(
        module,
        bits=config.for_layer(name, "bits"),
        group_size=config.for_layer(name, "group_size"),
        symmetric=config.for_layer(name, "symmetric"),
        scale_dtype=config.for_layer(name, "scale_dtype"),
        kernel=config.for_layer(name, "kernel"),
        prefer=config.for_layer(name, "prefer"),
        batches=config.for_layer(name, "batches"),
        tune_ms=config.for_layer(name, "tune_ms"),
        activation_bits=config.for_layer(name, "activation_bits"),
    )


def _restore(model: nn.Module, config: WeightOnlyConfig, record: ChangeRecord) -> None:
    restore_layers(model, record, lambda module, row: _layer(module, config, row["name"]))


def layer_record(name: str, layer: WeightOnlyLayer) -> dict[str, Any]:
    """The record row of one layer: format and bytes, the chosen path per batch with its measured ratio."""
    return _layer_row(name, layer, bits=layer.bits, group=layer.group, kernel=layer.kernel,
                      paths=layer.choices, resident_bytes=layer.resident_bytes(),
                      **({"not_usable": dict(layer.skipped)} if layer.skipped else {}))  # fmt: skip


@register(WeightOnlyConfig, restore=_restore, strength="bits", trainable=False)
def weight_only(model: nn.Module, config: WeightOnlyConfig, ctx: ApplyContext) -> ChangeRecord:
    """Weight-only int8/int4 with group-wise scales; each layer runs its fastest measured path."""
    chosen, notes = select_layers(model, config.target)
    rows = []
    with torch.no_grad():
        for name, module in chosen:
            layer = _layer(module, config, name)
            replace_module(model, name, layer)
            if config.for_layer(name, "kernel") == "torch" and layer.kernel != "torch":
                notes.append(f"{name}: ATen kernel not used ({layer.torch_kernel_problem()}); dequantizes")
            if parent_reads_weight(model, name):
                notes.append(f"{name}: its MultiheadAttention reads .weight directly (dequantized weight)")
            rows.append(layer_record(name, layer))
    paths = sorted({c["path"] for r in rows for c in r["paths"]} or {"dequant"})
    if "dequant" in paths:
        notes.insert(
            0, "fallback path 'dequant': weights are dequantized to float on every call (smaller, not faster)"
        )
    if "float" in paths:
        notes.insert(0, "path 'float': where no integer kernel beat the float op, a float copy of the dequantized "
                        "weight runs it (prefer='speed'; see resident_bytes; prefer='size' keeps integers only)")  # fmt: skip
    if any(p.startswith("int") for p in paths):
        notes.insert(
            0, "ATen integer kernels chosen by paired timing per layer shape and batch (layers[*].paths)"
        )
    resident = sum(r["resident_bytes"] for r in rows)
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={**size_summary(rows), "kernel": "/".join(paths), "resident_bytes": resident},
        notes=notes,
        state={},
    )
