"""Calibration inputs for one-shot techniques: from the batches passed to `apply`, or from a data source.

Batches may be tensors, (inputs, targets) pairs or dicts of tensors (a tokenizer's output: input_ids,
attention_mask; `labels` is dropped). They are cropped to `seq_len` tokens (a seeded random window when
a sequence is longer), cut into chunks of at most `batch_size` rows, and stopped after `samples` rows.
When no batches are passed, `source` names a data source: `pystdlib` or `text:PATH`, read through
`modelscale.data.load_data` so calibration windows come from the *train* split only (the held-out test
split stays unseen). Bytes are the tokens for byte-level models; with `tokenizer` (a Hugging Face
tokenizer folder, or a packaged model name such as `all-minilm-l6-v2`) the text of each window is
tokenized instead.

Example::

    chunks = calibration_chunks(None, samples=64, seq_len=128, batch_size=16, seed=0, source="pystdlib")
    for inputs in chunks:
        call_model(model, inputs)                    # tensors (16, 128) of byte ids
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError

_DROP_KEYS = ("labels", "label", "targets")


def model_inputs(batch: Any) -> Any:
    """The model input of one batch: a tensor, the first item of (inputs, targets), or a dict of tensors."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) or hasattr(batch, "keys") and hasattr(batch, "__getitem__"):
        return {k: batch[k] for k in list(batch.keys()) if k not in _DROP_KEYS}
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor | dict):
        return model_inputs(batch[0])
    raise ModelscaleError(
        f"calibration batches must be tensors, (inputs, targets) pairs or dicts of tensors; got {type(batch).__name__}"
    )


def rows_of(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    raise ModelscaleError("a calibration batch dict holds no tensor with a batch dimension")


def _map(inputs: Any, fn) -> Any:
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    return {k: fn(v) if isinstance(v, torch.Tensor) and v.dim() else v for k, v in inputs.items()}


def _seq_len(inputs: Any) -> int | None:
    """Length of dim 1 of the integer token tensor(s), None for float inputs (images, features)."""
    tensors = (
        [inputs] if isinstance(inputs, torch.Tensor) else [v for v in inputs.values() if torch.is_tensor(v)]
    )
    tokens = [t for t in tensors if t.dim() == 2 and not t.is_floating_point()]
    return int(tokens[0].shape[1]) if tokens else None


def _crop(inputs: Any, seq_len: int, generator: torch.Generator) -> Any:
    length = _seq_len(inputs)
    if not seq_len or length is None or length <= seq_len:
        return inputs
    start = int(torch.randint(0, length - seq_len + 1, (1,), generator=generator))

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[:, start : start + seq_len] if t.dim() == 2 and t.shape[1] == length else t

    return _map(inputs, crop)


def move(inputs: Any, device: torch.device) -> Any:
    return _map(inputs, lambda t: t.to(device))


def call_model(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def calibration_chunks(
    batches: Iterable[Any] | None,
    *,
    samples: int,
    seq_len: int,
    batch_size: int,
    seed: int,
    source: str = "",
    tokenizer: str = "",
    technique: str = "",
    device: torch.device | None = None,
) -> list[Any]:
    """Model inputs of at most `samples` rows, cropped to `seq_len`, in chunks of at most `batch_size` rows."""
    given = list(batches) if batches is not None else []
    if not given and source:
        given = load_source(source, samples=samples, seq_len=seq_len or 128, seed=seed, tokenizer=tokenizer)
    if not given:
        raise ModelscaleError(
            f"{technique or 'this technique'} needs calibration data: pass calibration=[(inputs, targets), ...] "
            "to apply (CLI: --data), or set calibration_data to pystdlib or text:PATH"
        )
    generator = torch.Generator().manual_seed(seed)
    chunks, total = [], 0
    for batch in given:
        inputs = _crop(model_inputs(batch), seq_len, generator)
        n = rows_of(inputs)
        for start in range(0, n, batch_size):
            take = min(batch_size, n - start, samples - total)
            if take <= 0:
                break
            chunk = _map(inputs, lambda t, a=start, b=start + take: t[a:b])
            chunks.append(move(chunk, device) if device is not None else chunk)
            total += take
        if total >= samples:
            break
    return chunks


def load_source(spec: str, *, samples: int, seq_len: int, seed: int, tokenizer: str = "") -> list[Any]:
    """`samples` seeded windows from the train split of data source `spec` (pystdlib, text:PATH)."""
    from modelscale.data import load_data

    name = spec.partition(":")[0]
    if name not in ("pystdlib", "text"):
        raise ModelscaleError(f"calibration_data must be pystdlib or text:PATH; got {spec!r}")
    window = seq_len if not tokenizer else 8 * seq_len  # bytes enough for seq_len tokens of most text
    bundle = load_data(
        spec, block_size=window, seed=seed
    )  # default splits: the same test split as evaluation
    train = bundle.train
    if len(train) == 0:
        raise ModelscaleError(
            f"{spec}: the train split is shorter than one calibration window of {window} bytes"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    windows = torch.stack([train[int(i)][0] for i in order])
    if not tokenizer:
        return [windows]
    tok = load_tokenizer(tokenizer)
    texts = [bytes(w.to(torch.uint8).tolist()).decode("utf-8", errors="ignore") for w in windows]
    enc = tok(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    return [{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}]


def load_tokenizer(source: str) -> Any:
    """A Hugging Face tokenizer from a local folder or a packaged model name (never downloaded)."""
    from modelscale.models.hf import _transformers
    from modelscale.models.packaged import packaged_model_dir

    folder = packaged_model_dir(source) or Path(source).expanduser()
    if not Path(folder).is_dir():
        raise ModelscaleError(
            f"tokenizer {source!r} is not a folder nor a packaged model; pass a tokenizer folder"
        )
    return _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
