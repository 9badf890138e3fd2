"""Sequential, memory-bounded calibration: one block at a time, each fed the *compressed* previous block.

The standard scheme of GPTQ / SparseGPT / Wanda / AWQ, for any `nn.Module` with Linear (or Hugging
Face `Conv1D`) layers:

1. Find the repeated blocks: the `nn.ModuleList` / `nn.Sequential` holding the most targeted layers
   (`blocks` names it explicitly), e.g. `blocks`, `hf.transformer.h`, `hf.bert.encoder.layer`.
2. Run the calibration inputs up to the first block and keep only that block's inputs (positional and
   keyword arguments: attention masks, rotary embeddings).
3. For each block: run it on the kept inputs with hooks that accumulate each targeted layer's input
   statistics (X Xᵀ, Σ x², Σ |x|), let the technique compress the block's layers, run the *compressed*
   block to get the inputs of the next block, and drop the old ones. Padding is not calibration data:
   when a batch carries a 2-D `attention_mask`, a layer input shaped (batch, tokens, …) adds only the
   rows of the real tokens to the statistics (a padded batch of sentences can be half padding).

So at any time the process holds one block's inputs (N sequences × T × hidden) plus one block's
statistics — never the whole model's activations; the record reports the peak it held. Before relying on
the chain, one full forward checks that each block really receives the previous block's output and the
same other arguments; when that fails (a model that does something between blocks) or no block list is
found, "replay" mode runs the whole (partly compressed) model for every unit instead: slower, but
assumes nothing about the model. Layers outside the blocks (a pooler, a classifier) are calibrated last
with one replay pass.

Example::

    report = run_oneshot(model, config, ctx, technique="gptq", compress=compress_unit)
    report.summary["mode"], report.summary["peak_held_bytes"], report.notes
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.select import Target, select_modules
from modelscale.techniques.oneshot.layer_stats import layer_ran, new_stats, stats_hooks, token_mask
from modelscale.techniques.oneshot.obs import HessianStats
from modelscale.techniques.oneshot.packed import is_conv1d
from modelscale.techniques.oneshot.sources import calibration_chunks, call_model, rows_of
from modelscale.techniques.quantize.common import QuantizedLayer


@dataclass(kw_only=True)
class OneShotConfig(TechniqueConfig):
    """Fields every calibrated one-shot technique shares (which layers, which calibration data)."""

    target: Target = param(
        factory=lambda: Target(types=("Linear", "Conv1D"), exclude=("*lm_head",)),
        help="layers to compress: Linear and HF Conv1D (the LM head stays float by default)",
    )
    calibration_samples: int = param(128, "calibration sequences (rows of the calibration batches) used")
    seq_len: int = param(
        0, "crop calibration sequences to this many tokens (0 = as given; 128 for calibration_data)"
    )
    batch_size: int = param(16, "sequences per forward pass while calibrating")
    calibration_data: str = param("", "data source used when no batches are passed: pystdlib or text:PATH")
    tokenizer: str = param(
        "", "HF tokenizer folder (or packaged model name) for calibration_data; empty = bytes"
    )
    seed: int = param(0, "seed for choosing calibration windows")
    blocks: str = param(
        "", "name of the ModuleList/Sequential of repeated blocks (empty = found automatically)"
    )

    def validate(self) -> None:
        check_range("calibration_samples", self.calibration_samples, 1)
        check_range("seq_len", self.seq_len, 0)
        check_range("batch_size", self.batch_size, 1)
        source = self.calibration_data.partition(":")
        if self.calibration_data and not (source[0] == "pystdlib" or (source[0] == "text" and source[2])):
            raise ModelscaleError(
                f"calibration_data must be pystdlib or text:PATH; got {self.calibration_data!r}"
            )


@dataclass
class Unit:
    """One block being compressed: its targeted layers that ran, their statistics, and a probe."""

    name: str
    module: nn.Module | None
    layers: list[tuple[str, nn.Module]]
    stats: dict[str, HessianStats]
    probe: Callable[[], torch.Tensor]  # the block's (or model's) output on the first chunk, current weights
    first_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # identity = layers sharing an input


@dataclass
class CalibrationReport:
    summary: dict[str, Any]
    notes: list[str]


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


def first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    for key in ("last_hidden_state", "logits"):
        if isinstance(getattr(output, key, None), torch.Tensor):
            return getattr(output, key)
    raise ModelscaleError(f"cannot find a tensor in a block output of type {type(output).__name__}")


def target_layers(model: nn.Module, target: Target) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """Targeted Linear / Conv1D layers (not yet quantized), and notes on what was skipped."""
    chosen, notes = [], []
    for name, module in select_modules(model, target):
        if isinstance(module, QuantizedLayer):
            notes.append(f"{name}: already quantized ({module.format}), left as is")
        elif isinstance(module, nn.Linear) or is_conv1d(module):
            chosen.append((name, module))
        elif not any(True for _ in module.children()):
            notes.append(f"{name}: {type(module).__name__} is not a Linear/Conv1D, left as is")
    if not chosen:
        raise ModelscaleError(
            "no targeted Linear or Conv1D layer; select some (target.types: Linear, Conv1D)"
        )
    return chosen, notes


def _tensor_bytes(*objs: Any) -> int:
    seen: set[int] = set()
    total = 0

    def walk(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in seen:
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, tuple | list):
            for v in obj:
                walk(v)

    for obj in objs:
        walk(obj)
    return total


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (a is b or torch.equal(a, b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return False


def find_blocks(
    model: nn.Module, layers: list[tuple[str, nn.Module]], name: str = ""
) -> tuple[str, nn.Module] | None:
    """(name, container) of the block list: the ModuleList/Sequential whose children hold most targeted layers."""
    if name:
        try:
            container = model.get_submodule(name)
        except AttributeError:
            raise ModelscaleError(
                f"blocks={name!r} is not a submodule of this model; name its ModuleList"
            ) from None
        if not isinstance(container, nn.ModuleList | nn.Sequential):
            raise ModelscaleError(
                f"blocks={name!r} is a {type(container).__name__}, not a ModuleList/Sequential"
            )
        return name, container
    best, best_key = None, (0, 0)
    for cname, module in model.named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential) or not len(module):
            continue
        prefix = f"{cname}." if cname else ""
        covered = sum(1 for lname, _ in layers if lname.startswith(prefix))
        key = (covered, len(module))
        if covered and key > best_key:
            best, best_key = (cname, module), key
    return best


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.train(mode)


class _Chain:
    """Block inputs for chain mode: captured once, then replaced by each compressed block's outputs."""

    def __init__(self, model, container, chunks) -> None:
        self.model, self.blocks, self.chunks = model, list(container), chunks
        self.inputs: list[tuple[tuple, dict]] = []
        self.slot: tuple[str, Any] | None = None

    def capture(self) -> str | None:
        """Keep the first block's arguments for every chunk; returns why the chain cannot be used, or None."""

        def pre(_module, args, kwargs):
            self.inputs.append((tuple(args), dict(kwargs)))
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            for chunk in self.chunks:
                with contextlib.suppress(_Stop):
                    call_model(self.model, chunk)
        finally:
            handle.remove()
        if len(self.inputs) != len(self.chunks):
            return "the first block did not run once per calibration batch"
        args, kwargs = self.inputs[0]
        if args and isinstance(args[0], torch.Tensor):
            self.slot = ("arg", 0)
        elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
            self.slot = ("kw", "hidden_states")
        else:
            return "the first block's input is not a tensor argument"
        return self.verify()

    def hidden(self, j: int) -> torch.Tensor:
        args, kwargs = self.inputs[j]
        return args[self.slot[1]] if self.slot[0] == "arg" else kwargs[self.slot[1]]

    def _with(self, args, kwargs, hidden):
        if self.slot[0] == "arg":
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, self.slot[1]: hidden}

    def _others(self, args, kwargs):
        return (
            (args[1:], kwargs)
            if self.slot[0] == "arg"
            else (args, {k: v for k, v in kwargs.items() if k != self.slot[1]})
        )

    def verify(self) -> str | None:
        """One full forward: does block i get block i-1's output and block 0's other arguments?"""
        state: dict[str, Any] = {"prev": None, "calls": [], "why": None}
        ref = self._others(*self.inputs[0])

        def pre(i):
            def hook(_module, args, kwargs):
                state["calls"].append(i)
                if i and state["why"] is None:
                    args, kwargs = tuple(args), dict(kwargs)
                    if not _same(self.hidden_of(args, kwargs), state["prev"]):
                        state["why"] = f"block {i} does not receive block {i - 1}'s output"
                    elif not _same(self._others(args, kwargs), ref):
                        state["why"] = f"block {i} gets other arguments than block 0"

            return hook

        def post(_module, _args, out):
            state["prev"] = first_tensor(out)

        handles = []
        for i, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
            handles.append(block.register_forward_hook(post))
        try:
            call_model(self.model, self.chunks[0])
        finally:
            for h in handles:
                h.remove()
        if state["calls"] != list(range(len(self.blocks))):
            return "the blocks do not run once each, in order"
        return state["why"]

    def hidden_of(self, args, kwargs):
        return args[self.slot[1]] if self.slot[0] == "arg" else kwargs.get(self.slot[1])

    def run(self, i: int, j: int) -> torch.Tensor:
        args, kwargs = self.inputs[j]
        return first_tensor(self.blocks[i](*args, **kwargs))

    def advance(self, i: int) -> None:
        for j, (args, kwargs) in enumerate(self.inputs):
            out = first_tensor(self.blocks[i](*args, **kwargs))
            self.inputs[j] = self._with(args, kwargs, out)

    def held_bytes(self) -> int:
        return _tensor_bytes(self.inputs)


def _units_in_blocks(layers, cname, container):
    prefix = f"{cname}." if cname else ""
    per_block = []
    for i, (child_name, child) in enumerate(container.named_children()):
        head = f"{prefix}{child_name}"
        per_block.append(
            (i, head, child, [(n, m) for n, m in layers if n == head or n.startswith(head + ".")])
        )
    inside = {n for *_, ls in per_block for n, _ in ls}
    rest = [(n, m) for n, m in layers if n not in inside]
    return per_block, rest


def run_oneshot(
    model: nn.Module,
    config: OneShotConfig,
    ctx: Any,
    *,
    technique: str,
    compress: Callable[[Unit], None],
    hessian: bool = True,
) -> CalibrationReport:
    """Calibrate and compress `model` in place, one block at a time (see the module docstring)."""
    started = time.perf_counter()
    layers, notes = target_layers(model, config.target)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    chunks = calibration_chunks(
        getattr(ctx, "calibration", None), samples=config.calibration_samples, seq_len=config.seq_len,
        batch_size=config.batch_size, seed=config.seed, source=config.calibration_data,
        tokenizer=config.tokenizer, technique=technique, device=device,
    )  # fmt: skip
    samples = sum(rows_of(c) for c in chunks)
    summary: dict[str, Any] = {"calibration_samples": samples, "calibration_batches": len(chunks)}
    masks = [token_mask(c) for c in chunks]
    padded = sum(int((~m).sum()) for m in masks if m is not None)
    if padded:
        total = sum(m.numel() for m in masks if m is not None)
        summary["padding_tokens_excluded"] = padded
        notes.append(f"padding left out of the statistics: {padded} of {total} tokens of padded batches")
    peak = [0]
    with _eval_no_grad(model):
        found = find_blocks(model, layers, config.blocks)
        chain, why = None, "no ModuleList/Sequential of blocks holds the targeted layers"
        if found is not None:
            chain = _Chain(model, found[1], chunks)
            why = chain.capture()
            if why is not None:
                chain = None
        if chain is not None:
            summary["mode"] = "sequential"
            summary["blocks"] = found[0] or "(model)"
            per_block, rest = _units_in_blocks(layers, *found)
            block_bytes = chain.held_bytes()
            chunk_bytes = max(_tensor_bytes(chain.hidden(j)) for j in range(len(chunks)))
            summary["block_input_bytes"] = block_bytes
            summary["all_blocks_input_bytes"] = block_bytes * len(per_block)
            for i, head, block, block_layers in per_block:
                if block_layers:
                    stats = new_stats(block_layers, hessian, device)
                    first: dict[str, torch.Tensor] = {}
                    flag, mask = [True], [None]
                    with stats_hooks(block_layers, stats, first, flag, mask):
                        for j in range(len(chunks)):
                            flag[0], mask[0] = j == 0, masks[j]
                            chain.run(i, j)
                            if j == 0:
                                first_ids = dict(first)
                    first.clear()
                    peak[0] = max(peak[0], chain.held_bytes() + sum(s.bytes() for s in stats.values()))
                    ran = layer_ran(block_layers, stats, notes)
                    if ran:
                        compress(Unit(head, block, ran, stats, lambda i=i: chain.run(i, 0), first_ids))
                    del stats, first_ids
                chain.advance(i)
                peak[0] = max(
                    peak[0], chain.held_bytes() + chunk_bytes
                )  # new outputs replace inputs one by one
            del chain
        else:
            summary["mode"] = "replay"
            notes.append(f"replay mode (every unit reruns the model): {why}")
            rest = layers
            for head, module, unit_layers in _replay_units(model, layers, chunks):
                _replay(model, head, module, unit_layers, chunks, hessian, device, compress, notes, peak)
            rest = []
        if rest:
            _replay(model, "(rest)", None, rest, chunks, hessian, device, compress, notes, peak)
    summary["peak_held_bytes"] = peak[0]
    summary["calibration_seconds"] = time.perf_counter() - started
    return CalibrationReport(summary, notes)


def _replay_units(model, layers, chunks):
    """Units for replay mode: the top-level children holding layers (descending through lone wrappers)."""
    root, prefix = model, ""
    while True:
        holders = [
            (n, c)
            for n, c in root.named_children()
            if any(ln.startswith(f"{prefix}{n}.") or ln == f"{prefix}{n}" for ln, _ in layers)
        ]
        if len(holders) == 1 and any(True for _ in holders[0][1].children()):
            root, prefix = holders[0][1], f"{prefix}{holders[0][0]}."
            continue
        break
    order: list[str] = []
    handles = [
        c.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n) if n not in order else None)
        for n, c in holders
    ]
    try:
        call_model(model, chunks[0])
    finally:
        for h in handles:
            h.remove()
    ordered = [n for n in order] + [n for n, _ in holders if n not in order]
    modules = dict(holders)
    units = []
    for n in ordered:
        head = f"{prefix}{n}"
        units.append(
            (head, modules[n], [(ln, m) for ln, m in layers if ln == head or ln.startswith(head + ".")])
        )
    return units


def _replay(model, head, module, layers, chunks, hessian, device, compress, notes, peak) -> None:
    stats = new_stats(layers, hessian, device)
    first: dict[str, torch.Tensor] = {}
    flag, mask = [True], [None]

    def stop(_m, _a, _o):
        raise _Stop

    handle = module.register_forward_hook(stop) if module is not None else None
    try:
        with stats_hooks(layers, stats, first, flag, mask):
            for j, chunk in enumerate(chunks):
                flag[0], mask[0] = j == 0, token_mask(chunk)
                with contextlib.suppress(_Stop):
                    call_model(model, chunk)
                if j == 0:
                    first_ids = dict(first)
                first.clear()
    finally:
        if handle is not None:
            handle.remove()
    peak[0] = max(peak[0], sum(s.bytes() for s in stats.values()))
    ran = layer_ran(layers, stats, notes)
    if ran:
        compress(
            Unit(head, module, ran, stats, lambda: first_tensor(call_model(model, chunks[0])), first_ids)
        )
