"""int8 through PyTorch 2 export (PT2E) and Inductor: whole regions of the model as fused int8 graphs.

Method: PyTorch's PT2E quantization (Zhang et al., "PyTorch 2: Faster Machine Learning Through Dynamic
Python Bytecode Transformation and Graph Compilation", ASPLOS 2024; the x86 Inductor quantizer of
torchao / torch.ao). Each region (a submodule, by default every direct child of the model that holds a
Linear or Conv2d) is exported to an ATen graph, annotated by the X86 Inductor quantizer, calibrated
(static) and converted to quantize → dequantize → op patterns, then compiled by Inductor with freezing,
which matches the patterns to oneDNN's int8 kernels (VNNI / AMX where the CPU has them) and fuses the
activation's quantization, the bias, GELU/ReLU and the requantization into their neighbours:

    x_q = clamp(round(x / s_x) + z_x, 0, 255)                  (s_x, z_x calibrated: static; per call: dynamic)
    y[m, n] = s_x · s_w[n] · Σ_k (x_q[m, k] − z_x) · W_q[n, k] + b[n]      (s_w[n] = max|W[n]| / 127)

and the LayerNorm, softmax and residual adds between GEMMs become a few fused loops instead of one pass
each. Compared with `static_int8` (one fused int8 GEMM per layer, float32 everywhere between layers)
the rest of the graph is compiled too: benchmarks/int8_encoder.py measures both, with PyTorch's
quantize_dynamic, ONNX Runtime and torchao, and a compiled float32 model for reference.

Storage: the regions keep their float weights (the state dict is the float model's, under
`<region>.module.`); the int8 graph is built from them at apply time and again on first use after a
reload (the calibrated activation scales are in the record), so this is a speed technique, not a size
one. The first call of each new input shape compiles (seconds); later calls are fast. CPU only. A region
is traced with the arguments it got during calibration: call it with the same structure (the same
keywords, None where it was None). Compiled regions get copies of their floating-point inputs: with
torch 2.14 Inductor's fused "int8 linear + add" wrote its sum into a graph input (the caller's tensor).

Example::

    from modelscale import apply
    from modelscale.techniques.quantize.pt2e_int8 import Pt2eInt8Config
    result = apply(model, Pt2eInt8Config(), calibration=batches)   # tensors, (x, y) pairs or dicts
    print(result.record.summary)        # regions, quantized weights, activations, compiled
    y = result.model(x)                 # compiles on the first call of each shape
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.techniques.quantize.smoothing import run_inputs

_PER_TENSOR = ("quantize_per_tensor", "dequantize_per_tensor")


@dataclass(kw_only=True)
class Pt2eInt8Config(TechniqueConfig):
    """int8 through PT2E export, the x86 Inductor quantizer and torch.compile (fused oneDNN int8 graphs)."""

    type: ClassVar[str] = "pt2e_int8"
    version: ClassVar[int] = 1

    activations: Literal["static", "dynamic"] = param(
        "static",
        "static: activation scales calibrated once (fastest; needs calibration data); "
        "dynamic: a per-tensor scale from each call's range",
    )
    regions: tuple[str, ...] = param(
        (),
        "submodules exported and compiled as one graph each; empty: every direct child of the model "
        "that holds a Linear or Conv2d",
    )
    compile: bool = param(
        True,
        "compile each region with Inductor (the fused int8 kernels); False: PT2E's reference graph in "
        "eager (same numbers within rounding, not faster; for checking)",
    )

    def validate(self) -> None:
        for name in self.regions:
            if not isinstance(name, str) or not name:
                raise ModelscaleError(f"regions must be submodule names such as 'encoder'; got {name!r}")


def _pt2e() -> tuple[Any, Any, Any]:
    """(prepare_pt2e, convert_pt2e, x86_inductor_quantizer module), torchao's first, else torch.ao's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError:
            try:
                import torch.ao.quantization.quantizer.x86_inductor_quantizer as xiq
                from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
            except ImportError:
                raise ModelscaleError(
                    f"pt2e_int8 needs PT2E quantization: install torchao (pip install torchao); torch "
                    f"{torch.__version__} has none built in"
                ) from None
    return prepare_pt2e, convert_pt2e, xiq


def _dynamic_shapes(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every dimension of every tensor input may vary (export keeps the ones the graph fixes)."""
    auto = torch.export.Dim.AUTO

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return dict.fromkeys(range(value.dim()), auto)
        if isinstance(value, tuple | list):
            return type(value)(spec(v) for v in value)
        if isinstance(value, dict):
            return {k: spec(v) for k, v in value.items()}
        return None

    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    return {name: spec(value) for name, value in bound.arguments.items()}


def _widen(value: Any) -> Any:
    """A batch of one becomes two for tracing (export fixes a dimension of size 1 to 1)."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == 1:
        return value.expand(2, *value.shape[1:]).clone()
    if isinstance(value, tuple | list):
        return type(value)(_widen(v) for v in value)
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    return value


def _float_copies(value: Any) -> Any:
    """Copies of the floating-point tensors in `value` (the caller's tensors must not change)."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(_float_copies(v) for v in value)
    if isinstance(value, dict):
        return {k: _float_copies(v) for k, v in value.items()}
    return value


def _export(module: nn.Module, args: tuple, kwargs: dict) -> torch.fx.GraphModule:
    args, kwargs = _widen(args), _widen(kwargs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shapes = _dynamic_shapes(module, args, kwargs)
            graph = torch.export.export(module, args, kwargs, dynamic_shapes=shapes, strict=False).module()
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; the user gets one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelscaleError(
            f"pt2e_int8 could not export {type(module).__name__} with torch.export ({first}); name "
            "smaller regions (regions=[...]) or use static_int8 / dynamic_int8"
        ) from exc
    graph.graph.eliminate_dead_code()  # outputs nobody reads (a BERT pooler) confuse the quantizer
    graph.recompile()
    _split_repeated_calls(graph)
    return graph


def _split_repeated_calls(graph: torch.fx.GraphModule) -> None:
    """Give each call of a module called more than once its own name in the nodes' module stacks.

    The quantizer groups nodes into one pattern per module name (the innermost `nn_module_stack`
    entry): a module called twice, such as the ReLU a torchvision BasicBlock uses after each conv,
    is one group with two outputs, and the x86 quantizer refuses it ("Input partition has more than
    one output node"). Export already tells the calls apart in the stack's key ("relu@1"); use it.
    """
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, entry = next(reversed(stack.items()))
        if "@" not in key or not isinstance(entry, tuple) or len(entry) != 2:
            continue
        fqn, cls = entry
        call = key.rpartition("@")[2]
        node.meta["nn_module_stack"] = {**stack, key: (f"{fqn}@{call}", cls)}


def _per_tensor_nodes(graph: torch.fx.GraphModule) -> Iterator[torch.fx.Node]:
    """The activations' quantize/dequantize nodes with literal scale and zero point, in graph order."""
    for node in graph.graph.nodes:
        name = getattr(node.target, "__name__", "")
        literal = (
            len(node.args) > 2 and isinstance(node.args[1], float | int) and isinstance(node.args[2], int)
        )
        if node.op == "call_function" and name.split(".")[0] in _PER_TENSOR and literal:
            yield node


def _quantized_weights(graph: torch.fx.GraphModule) -> int:
    return sum(
        1
        for n in graph.graph.nodes
        if n.op == "call_function" and getattr(n.target, "__name__", "").startswith("dequantize_per_channel")
    )


def quantize_region(
    module: nn.Module, calls: list[tuple[tuple, dict]], activations: str, qparams: list | None = None
) -> tuple[torch.fx.GraphModule, list[list[float]]]:
    """Export, annotate, calibrate on `calls` (or set the recorded `qparams`), convert; (graph, qparams)."""
    prepare_pt2e, convert_pt2e, xiq = _pt2e()
    module.eval()
    args, kwargs = calls[0]
    graph = _export(module, args, kwargs)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(
        xiq.get_default_x86_inductor_quantization_config(is_dynamic=activations == "dynamic")
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(graph, quantizer)
        for call_args, call_kwargs in calls if qparams is None else calls[:1]:
            prepared(*call_args, **call_kwargs)
        converted = convert_pt2e(prepared)
    nodes = list(_per_tensor_nodes(converted))
    if qparams is not None:  # a reload: the same graph, the recorded scales
        if len(qparams) != len(nodes):
            raise ModelscaleError(
                f"pt2e_int8: the recorded model had {len(qparams)} activation quantizers, this one has "
                f"{len(nodes)}; reload on the same architecture and torch/torchao versions"
            )
        for node, (scale, zero) in zip(nodes, qparams, strict=True):
            node.args = (node.args[0], float(scale), int(zero), *node.args[3:])
        converted.recompile()
    return converted, [[float(n.args[1]), int(n.args[2])] for n in nodes]


@contextlib.contextmanager
def _inductor_freezing() -> Iterator[None]:
    """Inductor's freezing (weights as constants) is what lets it match the int8 patterns to oneDNN."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


def _weights_key(module: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


class Pt2eInt8Region(nn.Module):
    """A region run as a PT2E int8 graph (compiled with Inductor); keeps the float `module` it came from."""

    def __init__(self, module: nn.Module, *, activations: str, qparams: list, compile: bool) -> None:
        super().__init__()
        self.module = module
        self.activations, self.qparams, self.compile = activations, [list(q) for q in qparams], compile
        object.__setattr__(self, "_runner", None)
        self._key: tuple | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_runner"], state["_key"] = None, None  # compiled graphs are rebuilt on use
        return state

    def set_graph(self, graph: torch.fx.GraphModule) -> None:
        # kept out of the module tree: the graph's int8 constants are not part of the state dict
        object.__setattr__(self, "_runner", torch.compile(graph) if self.compile else graph)
        self._key = _weights_key(self.module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._runner is None or self._key != _weights_key(self.module):
            device = next(iter(self.module.parameters()), torch.empty(0)).device
            if device.type != "cpu":
                raise ModelscaleError(f"pt2e_int8 runs on CPU; this region is on {device}")
            graph, _ = quantize_region(self.module, [(args, kwargs)], self.activations, self.qparams)
            self.set_graph(graph)
        if self.compile:  # Inductor's fused "linear + add" writes its sum into a float graph input
            args, kwargs = _float_copies(args), _float_copies(kwargs)
        try:
            return self._run(args, kwargs)
        except ModelscaleError:
            raise
        except Exception:  # noqa: BLE001 - an exported graph's guard (shape, stride) this call breaks
            # re-export for this call with the recorded scales, once; a second failure is one line
            graph, _ = quantize_region(self.module, [(args, kwargs)], self.activations, self.qparams)
            self.set_graph(graph)
            try:
                return self._run(args, kwargs)
            except Exception as exc:  # noqa: BLE001
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise ModelscaleError(
                    f"pt2e_int8: the int8 graph of {type(self.module).__name__} cannot run these inputs "
                    f"({first}); use static_int8 or dynamic_int8 for this model"
                ) from None

    def _run(self, args: tuple, kwargs: dict) -> Any:
        with torch.no_grad(), _inductor_freezing(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._runner(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"activations={self.activations}, compile={self.compile}, quantizers={len(self.qparams)}"


def default_regions(model: nn.Module) -> list[str]:
    """Every direct child of `model` that holds a Linear or Conv2d."""
    kinds = (nn.Linear, nn.Conv2d)
    return [
        name
        for name, child in model.named_children()
        if isinstance(child, kinds) or any(isinstance(m, kinds) for m in child.modules())
    ]


def _region_names(model: nn.Module, config: Pt2eInt8Config) -> list[str]:
    names = list(config.regions) or default_regions(model)
    if not names:
        raise ModelscaleError(
            "pt2e_int8 found no Linear or Conv2d layer to quantize (regions=[...] names some)"
        )
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise ModelscaleError(
                f"pt2e_int8: no submodule {name!r}; the model's children: {children}"
            ) from None
    return names


def _capture_calls(model: nn.Module, names: list[str], batches: list[Any]) -> dict[str, list]:
    """Each region's (args, kwargs) on every calibration batch, recorded while the float model runs."""
    calls: dict[str, list] = {n: [] for n in names}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, kwargs, n=n: calls[n].append((args, dict(kwargs))), with_kwargs=True
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                run_inputs(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _restore(model: nn.Module, config: Pt2eInt8Config, record: ChangeRecord) -> None:
    for row in record.layers:
        region = Pt2eInt8Region(
            model.get_submodule(row["name"]),
            activations=config.activations,
            qparams=record.state["qparams"][row["name"]],
            compile=config.compile,
        )
        _swap(model, row["name"], region)


NOTES = (
    "int8 graphs from PT2E (x86 Inductor quantizer){compiled}; each region keeps its float weights "
    "(the state dict is the float model's): a speed technique, not a size one",
    "the first call of each new input shape exports/compiles (seconds); CPU only",
)


@register(Pt2eInt8Config, restore=_restore, applies_to="linear", trainable=False, exports_onnx=False)
def pt2e_int8(model: nn.Module, config: Pt2eInt8Config, ctx: ApplyContext) -> ChangeRecord:
    """int8 via PT2E export + the x86 Inductor quantizer + torch.compile: fused int8 graphs per region."""
    names = _region_names(model, config)
    batches = list(ctx.calibration) if ctx.calibration is not None else []
    if not batches and ctx.example_inputs is not None:
        batches = [ctx.example_inputs] if config.activations == "dynamic" else []
    if not batches:
        raise ModelscaleError(
            "pt2e_int8 needs calibration data to trace (and, for static activations, to calibrate): pass "
            "calibration=[inputs, ...] to apply (CLI: --data)"
        )
    model.eval()
    calls = _capture_calls(model, names, batches)
    rows, qparams = [], {}
    for name in names:
        if not calls[name]:
            raise ModelscaleError(f"pt2e_int8: region {name!r} never ran on the calibration batches")
        module = model.get_submodule(name)
        graph, found = quantize_region(module, calls[name], config.activations)
        region = Pt2eInt8Region(module, activations=config.activations, qparams=found, compile=config.compile)
        region.set_graph(graph)
        _swap(model, name, region)
        qparams[name] = found
        rows.append(
            {"name": name, "kind": type(module).__name__, "quantized_weights": _quantized_weights(graph),
             "activation_quantizers": len(found)}
        )  # fmt: skip
    compiled = " compiled by Inductor (oneDNN int8 kernels)" if config.compile else ", eager reference graph"
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={
            "regions": len(rows),
            "quantized_weights": sum(r["quantized_weights"] for r in rows),
            "activations": config.activations,
            "kernel": "inductor" if config.compile else "reference",
        },
        notes=[NOTES[0].format(compiled=compiled), NOTES[1]],
        state={"qparams": qparams},
    )
