#!/usr/bin/env python3
"""Peer column of `llm_oneshot.py`: Intel Neural Compressor 3.x weight-only RTN / GPTQ / AWQ on CPU.

Runs in a *separate* virtualenv that has `neural-compressor-pt` installed (so the project's own
dependencies stay clean); `llm_oneshot.py --peer-python PATH` calls it as a subprocess. The job folder
holds `model.pt` (the whole float module, pickled), `calibration.pt` (the same calibration inputs our
techniques get: tensors or dicts of tensors) and `jobs.json` (one entry per method: algo, bits,
group_size, act_order). For each job this script quantizes a fresh copy of the model with INC's
`prepare` / calibration / `convert` (asymmetric, the same bits and group size as our rows), then writes
the float state_dict INC's packed model computes with (packed layers dequantized, AWQ's input scales
folded into the weights; same keys as the input model, so the caller evaluates it with the same
quality metric as ours), the compression wall time, and the bytes of INC's packed state_dict saved with
`torch.save` — or the one-line error INC gave.

Usage (normally only through llm_oneshot.py)::

    PEERVENV/bin/python benchmarks/llm_oneshot_inc.py JOB_DIR
"""

from __future__ import annotations

import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch


def call(model: torch.nn.Module, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def quantize_one(model: torch.nn.Module, job: dict, calibration: list, folder: Path) -> torch.nn.Module:
    from neural_compressor.torch.quantization import AWQConfig, GPTQConfig, RTNConfig, convert, prepare

    common = {"bits": job["bits"], "group_size": job["group_size"], "use_sym": False}
    if job["algo"] == "rtn":
        config = RTNConfig(**common)
    elif job["algo"] == "gptq":
        config = GPTQConfig(
            **common,
            act_order=job["act_order"],
            percdamp=0.01,
            block_size=128,
            model_path=str(folder),  # INC 3.10 resolves "" as a hub repo id even when not layer-wise
        )
    elif job["algo"] == "awq":
        config = AWQConfig(**common)
    else:
        raise ValueError(f"unknown algo {job['algo']!r}")
    prepared = prepare(model, quant_config=config, example_inputs=calibration[0])
    with torch.no_grad():
        for inputs in calibration:
            call(prepared, inputs)
    return convert(prepared)


def float_model(model: torch.nn.Module) -> torch.nn.Module:
    """Swap INC's packed layers (and AWQ's input-scaled MulLinear) back to nn.Linear with the weights
    they compute with, so the state_dict has the original keys and loads into the caller's model."""
    for name, child in list(model.named_children()):
        if hasattr(child, "recover") and hasattr(child, "in_features"):  # INCWeightOnlyLinear
            linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(child.recover().float())
                if child.bias is not None:
                    linear.bias.copy_(child.bias.float())
            setattr(model, name, linear)
        elif type(child).__name__ == "MulLinear":  # y = linear(x · s): fold s into the columns
            inner = float_model(torch.nn.Sequential(child.linear))[0]
            with torch.no_grad():
                inner.weight.mul_(child.input_scale.float().view(1, -1))
            setattr(model, name, inner)
        else:
            float_model(child)
    return model


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("neural-compressor-pt", "torch", "transformers")}


def main() -> None:
    folder = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # to unpickle the zoo's gpt
    model = torch.load(folder / "model.pt", weights_only=False).eval()
    calibration = torch.load(folder / "calibration.pt", weights_only=False)
    jobs = json.loads((folder / "jobs.json").read_text())
    results = []
    for i, job in enumerate(jobs):
        torch.manual_seed(0)
        try:
            t0 = time.perf_counter()
            quantized = quantize_one(copy.deepcopy(model), job, calibration, folder)
            seconds = time.perf_counter() - t0
            packed = folder / f"packed-{i}.pt"
            torch.save(quantized.state_dict(), packed)
            layers = sum(
                1 for m in quantized.modules() if hasattr(m, "recover") and hasattr(m, "in_features")
            )
            state = {k: v.detach().clone() for k, v in float_model(quantized).state_dict().items()}
            torch.save(state, folder / f"state-{i}.pt")
            results.append({"seconds": seconds, "bytes": packed.stat().st_size, "layers": layers})
            packed.unlink()
        except Exception as exc:  # noqa: BLE001 - the peer's own error is the result
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            results.append({"error": last[:300]})
        print(json.dumps({"job": job, **results[-1]}), flush=True)
        # after every job, so a caller's timeout keeps the finished ones
        (folder / "results.json").write_text(json.dumps({"versions": versions(), "rows": results}, indent=2))


if __name__ == "__main__":
    main()
