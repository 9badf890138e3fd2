"""Table 4 of benchmarks/quantize.py: quantization techniques on whole models, run from there.

The zoo mlp and cnn (width 0.5) trained briefly on digits, torchvision:resnet18 at 3x32x32 (conv layers
only) and a BERT-mini-sized encoder: float32 against each technique at batch 1 and 32, with the layers
each one touched, the bytes ratio, the serialized safetensors size ratio and the digits accuracy delta.

    .venv/bin/python benchmarks/quantize.py --tables models --json /tmp/models.json
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.saving import save_compressed
from modelscale.techniques.quantize.cast import CastConfig
from modelscale.techniques.quantize.common import quantized_bytes
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config
from modelscale.techniques.quantize.weight_only import WeightOnlyConfig


def trained_digits(name: str, epochs: int, **kwargs):
    from modelscale.data import load_data
    from modelscale.models import build_model
    from modelscale.train import TrainConfig, evaluate, fit

    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=data.input_shape, **kwargs)
    cfg = TrainConfig(
        epochs=epochs, optimizer="adamw", lr=3e-3, batch_size=64, seed=0, progress=False, device="cpu"
    )
    fit(model, data, cfg)
    model.eval()
    return model, data, lambda m: evaluate(m, data.test)["accuracy"]


def bert_mini():
    """hf:tiny-bert at BERT-mini size (4 layers, d=256, 4 heads, seq 128), else a torch encoder of that size."""
    try:
        from modelscale.models import build_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model("hf:tiny-bert", num_classes=2, width=4, depth=2, block_size=128)
        return model.eval(), "hf:tiny-bert (4 layers, d=256, seq 128)"
    except Exception:  # transformers missing: the same size with torch modules

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(256, 256)
                layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
                self.head = nn.Linear(256, 2)

            def forward(self, tokens):
                return self.head(self.encoder(self.embed(tokens)).mean(1))

        torch.backends.mha.set_fastpath_enabled(False)  # run every Linear through its own forward
        return Encoder().eval(), "torch TransformerEncoder (4 layers, d=256, seq 128)"


def methods(model_kind: str) -> list[tuple[str, object]]:
    if model_kind == "resnet18":
        conv = {"types": ["Conv2d"]}
        return [
            ("dynamic_int8", None),  # Linear only: nothing to do on a conv-only target
            ("weight_only int8 g128", WeightOnlyConfig(bits=8, group_size=128, target=conv)),
            (
                "weight_only int4 g32 asym",
                WeightOnlyConfig(bits=4, group_size=32, symmetric=False, target=conv),
            ),
            ("cast bfloat16", CastConfig(dtype="bfloat16", target=conv)),
            ("cast float8_e4m3", CastConfig(dtype="float8_e4m3", target=conv)),
        ]
    half = [("cast float16", CastConfig(dtype="float16"))] if model_kind in ("mlp", "cnn") else []
    return [
        ("dynamic_int8", DynamicInt8Config()),
        ("weight_only int8 g128", WeightOnlyConfig(bits=8, group_size=128)),
        ("weight_only int4 g32 asym", WeightOnlyConfig(bits=4, group_size=32, symmetric=False)),
        ("cast bfloat16", CastConfig(dtype="bfloat16")),
        *half,
        ("cast float8_e4m3", CastConfig(dtype="float8_e4m3")),
    ]


def file_size(model, records, folder: Path) -> int:
    save_compressed(folder, model, records)
    return (folder / "model.safetensors").stat().st_size


def model_rows(args, *, log, time_pair) -> list[dict]:
    """Table 4 of quantize.py: each technique against float32 on four models (`log`, `time_pair` are its)."""
    from modelscale.models import build_model

    rows = []
    cases = []
    log("training mlp and cnn on digits")
    mlp, data, acc_fn = trained_digits("mlp", 8)
    x_digits = torch.stack([data.test[i][0] for i in range(32)])
    cases.append(("mlp", mlp, x_digits, acc_fn))
    if not args.quick:
        cnn, _, _ = trained_digits("cnn", 3, width=0.5)
        cases.append(("cnn", cnn, x_digits, acc_fn))
        torch.manual_seed(0)
        resnet = build_model("torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32)).eval()
        cases.append(("resnet18", resnet, torch.randn(32, 3, 32, 32), None))
    log("building the BERT-mini-sized encoder")
    bert, bert_name = bert_mini()
    cases.append(("transformer", bert, torch.randint(0, 256, (32, 128)), None))
    tmp = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    for kind, model, x32, acc_fn in cases:
        base_acc = acc_fn(model) if acc_fn else None
        base_file = file_size(model, [], tmp / f"{kind}-float")
        for label, config in methods(kind):
            row = {"model": bert_name if kind == "transformer" else kind, "method": label}
            if config is None:
                rows.append({**row, "touched": "n/a: dynamic_int8 quantizes Linear layers only"})
                continue
            result = apply(model, config)
            q = result.model.eval()
            types = {}
            for layer in result.record.layers:
                types[layer["kind"]] = types.get(layer["kind"], 0) + 1
            sizes = quantized_bytes(q)
            row.update(
                touched=", ".join(f"{n} {k}" for k, n in sorted(types.items())),
                bytes_ratio=sizes["ratio"],
                quantized_layers_bytes_ratio=sizes["quantized_ratio"],
                file_ratio=base_file / file_size(q, [result.record], tmp / f"{kind}-{label}"),
                kernel=result.record.summary.get("kernel", "dtype"),
            )
            if acc_fn:
                row["accuracy_delta_points"] = 100 * (base_acc - acc_fn(q))
            for batch in (1, 32):
                xb = x32[:batch]
                r = time_pair(lambda m=model, xb=xb: m(xb), lambda q=q, xb=xb: q(xb), budget_s=args.budget,
                              max_repeats=args.repeats)  # fmt: skip
                row[f"b{batch}"] = r
            rows.append(row)
            log(f"{kind} {label}: b1 {row['b1']['speedup']:.2f}x, b32 {row['b32']['speedup']:.2f}x, "
                f"bytes {row['bytes_ratio']:.2f}x, file {row['file_ratio']:.2f}x")  # fmt: skip
    return rows
