"""`hf:<source>`: a Hugging Face transformers model from local files, wrapped to return plain logits.

`<source>` is one of

- `tiny-gpt2`, `tiny-bert`, `tiny-llama` — built-in tiny configs (byte vocabulary of 256, hidden 64·width,
  2·depth layers, 4 heads), random init, for tests and scaling sweeps;
- a directory with `config.json` and weights — loaded with `from_pretrained(dir, local_files_only=True)`;
  safetensors weights only, unless the caller passes its own `allow_pickle=True` for a folder that holds
  only pickled ones (`pytorch_model.bin`); a model's custom code (`auto_map`) never runs;
- a `config.json` file — that architecture, random init;
- a packaged model's name, e.g. `all-minilm-l6-v2` (see `models/packaged.py`): its installed folder.

Nothing is ever downloaded: hub ids are refused (download the model yourself and pass its directory).
Keyword options: `task="classification"` (AutoModelForSequenceClassification with `num_classes` labels)
or `task="lm"` (AutoModelForCausalLM) or `task="embedding"` (AutoModel; forward returns the
attention-mask mean of the last hidden states, (B, hidden): sentence-transformers' pooling), `block_size`
(position embeddings of the tiny configs),
`attn_implementation` ("eager" | "sdpa"), and any other key is set on the transformers config (e.g.
`num_attention_heads=8`). The result is `HFLogits`, whose forward(input_ids) returns the `.logits`
tensor: (B, num_classes) for classification, (B, T, vocab) for lm; the transformers model is `.hf`.
transformers is an optional dependency: `pip install modelscale[hf]`.

Example::

    from modelscale.models import build_model
    model = build_model("hf:tiny-llama", task="lm", block_size=64)
    logits = model(torch.randint(0, 256, (2, 64)))          # (2, 64, 256)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models.registry import ModelArgs, register_model

TASKS = ("classification", "lm", "embedding")
TINY = ("tiny-bert", "tiny-gpt2", "tiny-llama")
_HEADS = 4
_VOCAB = 256


class HFLogits(nn.Module):
    """Wraps a transformers model so that forward(input_ids) returns the logits tensor."""

    def __init__(self, hf: nn.Module, task: str) -> None:
        super().__init__()
        self.hf = hf
        self.task = task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.task == "embedding":
            hidden = self.hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if attention_mask is None:
                return hidden.mean(dim=1)
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if attention_mask is None:
            return self.hf(input_ids=input_ids).logits
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def _transformers():
    import logging

    # transformers' model code imports torchao, whose enum registration makes the newest torch log a
    # deprecation warning per enum on stderr; it is not the user's concern, so it is kept quiet here.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import transformers
        import transformers.modeling_utils  # noqa: F401 - the import that logs
    except ImportError:
        raise ModelscaleError(
            "hf: models need the transformers package; install modelscale[hf] (pip install transformers)"
        ) from None
    finally:
        pytree_log.setLevel(level)
    return transformers


def _tiny_config(tf: Any, which: str, args: ModelArgs, block_size: int, task: str) -> Any:
    hidden = args.scaled(64, multiple=_HEADS)
    layers = args.repeats(2)
    p = args.dropout
    if which == "tiny-gpt2":
        return tf.GPT2Config(
            vocab_size=_VOCAB, n_positions=block_size, n_embd=hidden, n_layer=layers, n_head=_HEADS,
            resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, summary_first_dropout=p,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )  # fmt: skip
    if which == "tiny-bert":
        return tf.BertConfig(
            vocab_size=_VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=_HEADS,
            intermediate_size=4 * hidden, max_position_embeddings=block_size,
            hidden_dropout_prob=p, attention_probs_dropout_prob=p, pad_token_id=0,
            is_decoder=task == "lm",
        )  # fmt: skip
    return tf.LlamaConfig(
        vocab_size=_VOCAB, hidden_size=hidden, intermediate_size=-(-8 * hidden // 3 // 8) * 8,
        num_hidden_layers=layers, num_attention_heads=_HEADS, num_key_value_heads=_HEADS // 2,
        max_position_embeddings=block_size, attention_dropout=p,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip


def _set_overrides(config: Any, overrides: dict[str, Any], source: str) -> None:
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ModelscaleError(
                f"hf:{source} has no config option {key!r}; options are task, block_size, attn_implementation "
                f"or an attribute of {type(config).__name__}"
            )
        setattr(config, key, value)


def _auto_class(tf: Any, task: str) -> Any:
    if task == "embedding":
        return tf.AutoModel
    return tf.AutoModelForSequenceClassification if task == "classification" else tf.AutoModelForCausalLM


def _check_vocab(config: Any, args: ModelArgs, source: str) -> None:
    vocab = getattr(config, "vocab_size", None)
    if args.num_classes != 10 and vocab is not None and args.num_classes != vocab:
        raise ModelscaleError(
            f"hf:{source} with task='lm' predicts its vocabulary of {vocab}, but num_classes={args.num_classes}; "
            "leave num_classes at its default or set it to the vocabulary size"
        )


def _prepare(config: Any, args: ModelArgs, task: str, notes: list[str]) -> None:
    if task == "classification":
        config.num_labels = args.num_classes
        if getattr(config, "pad_token_id", 0) is None:
            # decoder classifiers pick the last non-pad token and refuse batches without a pad id
            config.pad_token_id = 0
            notes.append("pad_token_id set to 0 (decoder classification needs one)")
    elif hasattr(config, "use_cache"):
        config.use_cache = False


_PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _weights_format(path: Path, allow_pickle: bool) -> bool:
    """True to load safetensors only; refuses a folder whose only weights are pickles without the opt-in."""
    if any(path.glob("*.safetensors")):
        return True
    pickled = sorted(p.name for pattern in _PICKLED_WEIGHTS for p in path.glob(pattern))
    if pickled and not allow_pickle:
        raise ModelscaleError(
            f"hf:{path} holds only pickled weights ({', '.join(pickled[:3])}), which can run code when loaded; "
            "convert them to safetensors (save_pretrained(dir, safe_serialization=True)) where you trust them, "
            "or pass --allow-pickle (Python: allow_pickle=True) if you trust this folder"
        )
    return not pickled


def _load_dir(
    tf: Any,
    path: Path,
    args: ModelArgs,
    task: str,
    overrides: dict[str, Any],
    kw: dict[str, Any],
    notes: list[str],
    allow_pickle: bool = False,
) -> nn.Module:
    if not (path / "config.json").is_file():
        raise ModelscaleError(f"hf:{path} has no config.json; pass a transformers model directory")
    safe_only = _weights_format(path, allow_pickle)
    config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    _set_overrides(config, overrides, str(path))
    _prepare(config, args, task, notes)
    if task == "lm":
        _check_vocab(config, args, str(path))
    try:
        model, info = _auto_class(tf, task).from_pretrained(
            str(path), config=config, local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=task == "classification", use_safetensors=safe_only, **kw,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; the user gets one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelscaleError(
            f"cannot load hf:{path}: {first}; the folder needs config.json and weights "
            "(pass hf:<dir>/config.json for a randomly initialised model)"
        ) from None
    mismatched = (k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ()))
    fresh = sorted({*info.get("missing_keys", ()), *mismatched})
    if fresh:
        notes.append(f"newly initialised (not in the checkpoint): {', '.join(fresh[:6])}")
    return model


@register_model(
    "hf",
    prefix=True,
    usage="hf:<dir|config.json>",
    examples=tuple(f"hf:{name}" for name in TINY),
    summary="transformers model from a local dir / config.json / built-in tiny config, returning logits",
)
def build_hf(
    args: ModelArgs,
    arg: str,
    *,
    task: str = "classification",
    block_size: int | None = None,
    attn_implementation: str | None = None,
    allow_pickle: bool = False,
    **overrides: Any,
) -> nn.Module:
    if "trust_remote_code" in overrides:
        raise ModelscaleError(
            "hf models never run their own code (trust_remote_code); use a model that standard "
            "transformers classes load"
        )
    if task not in TASKS:
        raise ModelscaleError(f"hf task must be one of {', '.join(TASKS)}; got {task!r}")
    if block_size is None:
        block_size = args.input_shape[0] if len(args.input_shape) == 1 else 128
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ModelscaleError(f"hf option block_size must be an integer >= 1, got {block_size!r}")
    from modelscale.models.packaged import packaged_model_dir

    path = packaged_model_dir(arg) or Path(arg).expanduser()
    builtin = arg in TINY
    if not builtin and not path.exists():
        raise ModelscaleError(
            f"hf:{arg} is not a built-in ({', '.join(TINY)}) nor an existing directory or config.json; "
            "nothing is downloaded: save the model locally and pass its directory"
        )
    if not builtin and (args.width != 1.0 or args.depth != 1.0):
        raise ModelscaleError(
            "width and depth multipliers apply only to the built-in hf:tiny-* configs; "
            "edit the config's sizes instead"
        )
    tf = _transformers()
    notes: list[str] = []
    kw: dict[str, Any] = {}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    if path.is_dir() and not builtin:
        model = _load_dir(tf, path, args, task, overrides, kw, notes, allow_pickle)
    else:
        if builtin:
            config = _tiny_config(tf, arg, args, block_size, task)
        else:
            from modelscale.core.io import read_structured

            data = read_structured(path)
            if not isinstance(data, dict) or "model_type" not in data:
                raise ModelscaleError(f"{path} has no 'model_type'; pass a transformers config.json")
            try:
                config = tf.AutoConfig.for_model(**data)
            except ValueError as exc:
                raise ModelscaleError(f"{path}: {str(exc).strip().splitlines()[0]}") from None
        _set_overrides(config, overrides, arg)
        _prepare(config, args, task, notes)
        if task == "lm":
            _check_vocab(config, args, arg)
        model = _auto_class(tf, task).from_config(config, **kw)
    wrapped = HFLogits(model, task)
    wrapped.modelscale_notes = notes
    return wrapped
