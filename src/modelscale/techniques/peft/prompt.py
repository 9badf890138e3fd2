"""Prompt tuning and prefix tuning for `hf:` transformers models (via Hugging Face peft).

Prompt tuning — Lester, Al-Rfou & Constant, "The Power of Scale for Parameter-Efficient Prompt
Tuning" (2021): n trainable vectors P ∈ R^{n×d} are prepended to the token embeddings,

    h_0 = [P ; E(x_1) … E(x_T)],   trainable parameters n·d.

Prefix tuning — Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation" (2021):
every attention layer l attends to n extra trainable keys and values,

    softmax(Q [K_l^P ; K_l]ᵀ / √d_head) [V_l^P ; V_l],   trainable parameters n·2·L·d
    (optionally produced by an MLP from an n×d table, the paper's reparametrisation).

Both freeze the whole model; for classification the head trains too (peft's `modules_to_save`).
They change what the model attends to, not its layers, so they apply only to transformers models
built with `build_model("hf:…")` (`HFLogits`): the transformers model `model.hf` is replaced by a
peft `PeftModel` around it. `HFLogits` keeps returning logits for the original positions: for a
causal LM, prompt tuning makes peft return logits for the n virtual tokens too, and a forward hook
on the PeftModel slices them off, so outputs keep shape (B, T, vocab). Models with learned absolute
positions (GPT-2, BERT) see T + n positions, so T ≤ positions − n; a pre-forward hook turns a longer
input into a one-line error. Prefix tuning on a classification model uses peft's feature-extraction
wrapper (transformers ≥ 5 names the cache argument `cache`, which peft's SEQ_CLS prefix path does
not find) with the head in `modules_to_save`; the record notes it.

`save_peft_adapter` / `load_peft_adapter` store the adapter in peft's own format (adapter_config.json
+ adapter_model.safetensors, readable by `PeftModel.from_pretrained`); `save_compressed` works too.

Example::

    from modelscale import apply
    from modelscale.techniques.peft.prompt import PromptTuningConfig, save_peft_adapter
    model = build_model("hf:tiny-gpt2", task="lm", block_size=128)
    result = apply(model, PromptTuningConfig(num_virtual_tokens=16))
    fit(result.model, data, TrainConfig(epochs=1)); save_peft_adapter(result.model, "adapter_dir")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.core.select import Target
from modelscale.techniques.peft._common import count_params, param_summary

SUPPORTED_MODELS = "hf:tiny-gpt2, hf:tiny-bert, hf:tiny-llama, hf:<dir|config.json> (build_model's HFLogits)"
_HEAD_NAMES = ("score", "classifier")  # what transformers calls sequence-classification heads
_POSITION_TABLES = ("wpe", "position_embeddings")  # learned absolute positions (GPT-2, BERT)


def _no_target(name: str, target: Target) -> None:
    if target != Target():
        raise ModelscaleError(
            f"{name} adds virtual tokens and selects no layers; leave target at its default"
        )


@dataclass(kw_only=True)
class PromptTuningConfig(TechniqueConfig):
    """Prepend trainable virtual-token embeddings to the input of an hf: model; freeze the model."""

    type: ClassVar[str] = "prompt_tuning"
    version: ClassVar[int] = 1

    target: Target = param(factory=Target, help="not used: prompt tuning selects no layers")
    num_virtual_tokens: int = param(8, "number n of trainable prompt vectors prepended to every input")
    init: Literal["sample_vocab", "random"] = param(
        "sample_vocab", "start from embeddings of random vocabulary tokens, or from N(0, 1) vectors"
    )
    seed: int = param(0, "seed for the prompt's initial values")

    def validate(self) -> None:
        check_range("num_virtual_tokens", self.num_virtual_tokens, 1)
        check_range("seed", self.seed, 0)
        _no_target(self.type, self.target)


@dataclass(kw_only=True)
class PrefixTuningConfig(TechniqueConfig):
    """Give every attention layer of an hf: model trainable prefix keys and values; freeze the model."""

    type: ClassVar[str] = "prefix_tuning"
    version: ClassVar[int] = 1

    target: Target = param(factory=Target, help="not used: prefix tuning selects no layers")
    num_virtual_tokens: int = param(8, "prefix length n: extra keys/values per attention layer")
    projection: bool = param(False, "produce the prefixes with a 2-layer MLP from an n×d table (Li & Liang)")
    projection_hidden: int = param(0, "hidden width of that MLP; 0 = the model's hidden size")
    seed: int = param(0, "seed for the prefix's initial values")

    def validate(self) -> None:
        check_range("num_virtual_tokens", self.num_virtual_tokens, 1)
        check_range("projection_hidden", self.projection_hidden, 0)
        check_range("seed", self.seed, 0)
        _no_target(self.type, self.target)


# --- helpers ---------------------------------------------------------------------------------------
def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ModelscaleError(
            "prompt and prefix tuning need the peft package; pip install modelscale[peft]"
        ) from None
    return peft


def _hf_wrapper(model: nn.Module, technique: str) -> nn.Module:
    from modelscale.models.hf import HFLogits

    if not isinstance(model, HFLogits):
        raise ModelscaleError(
            f"{technique} applies only to transformers models: {SUPPORTED_MODELS}; got {type(model).__name__} "
            "(use lora, bottleneck_adapter or bitfit for other models)"
        )
    return model


def _head_name(hf: nn.Module) -> str:
    children = dict(hf.named_children())
    for name in _HEAD_NAMES:
        if name in children:
            return name
    raise ModelscaleError(
        f"cannot find the classification head of {type(hf).__name__} (a child named score or classifier); "
        "build the model with task='lm' or use lora"
    )


def _position_limit(hf: nn.Module) -> int | None:
    """Rows of the learned absolute position table (GPT-2 wpe, BERT position_embeddings); None if rotary."""
    for name, module in hf.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            return module.num_embeddings
    return None


def _input_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1]):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    return None


def _check_positions(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Pre-forward hook: the input plus the virtual tokens must fit the learned position table."""
    limit = getattr(module, "modelscale_position_limit", None)
    length = _input_length(args, kwargs)
    n = module.active_peft_config.num_virtual_tokens
    if limit is not None and length is not None and length + n > limit:
        raise ModelscaleError(
            f"{length} tokens + {n} virtual tokens exceed the model's {limit} positions; "
            f"feed at most {limit - n} tokens, use fewer virtual tokens or build with a larger block_size"
        )


def _drop_virtual_logits(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> Any:
    """Forward hook: remove the logits peft returns for prepended prompt tokens (causal LM prompt tuning)."""
    n = module.active_peft_config.num_virtual_tokens
    length = _input_length(args, kwargs)
    logits = getattr(output, "logits", None)
    if (
        isinstance(logits, torch.Tensor)
        and logits.dim() == 3
        and length is not None
        and logits.shape[1] == length + n
    ):
        output.logits = logits[:, n:]
    return output


def _install_hooks(peft_model: nn.Module, base: nn.Module) -> None:
    peft_model.modelscale_position_limit = _position_limit(base)
    peft_model.register_forward_pre_hook(_check_positions, with_kwargs=True)
    config = peft_model.active_peft_config
    if config.peft_type.value == "PROMPT_TUNING" and config.task_type == "CAUSAL_LM":
        peft_model.register_forward_hook(_drop_virtual_logits, with_kwargs=True)


def _peft_config(config: TechniqueConfig, task: str, hf: nn.Module) -> tuple[Any, list[str]]:
    """The peft config for our config and the wrapper's task, plus notes on the choices made."""
    peft = _peft()
    notes: list[str] = []
    if isinstance(config, PromptTuningConfig):
        init = (
            peft.PromptTuningInit.SAMPLE_VOCAB
            if config.init == "sample_vocab"
            else peft.PromptTuningInit.RANDOM
        )
        task_type = "CAUSAL_LM" if task == "lm" else "SEQ_CLS"
        return (
            peft.PromptTuningConfig(
                task_type=task_type, num_virtual_tokens=config.num_virtual_tokens, prompt_tuning_init=init
            ),
            notes,
        )
    assert isinstance(config, PrefixTuningConfig)
    kwargs: dict[str, Any] = {"task_type": "CAUSAL_LM"}
    if task != "lm":
        head = _head_name(hf)
        kwargs = {"task_type": "FEATURE_EXTRACTION", "modules_to_save": [head]}
        notes.append(
            f"classification: peft's feature-extraction wrapper passes the prefix as the cache; head {head} "
            "trains fully (modules_to_save)"
        )
    if config.projection:
        kwargs["prefix_projection"] = True
        kwargs["encoder_hidden_size"] = config.projection_hidden or int(hf.config.hidden_size)
    return peft.PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, **kwargs), notes


def _wrap(model: nn.Module, config: TechniqueConfig) -> tuple[nn.Module, list[str]]:
    """Replace `model.hf` by a seeded PeftModel for `config`; return it and notes."""
    peft = _peft()
    hf = model.hf
    if isinstance(hf, peft.PeftModel):
        raise ModelscaleError(
            f"this model already carries a peft {hf.active_peft_config.peft_type.value} adapter; "
            f"apply {config.type} to the base model"
        )
    peft_config, notes = _peft_config(config, model.task, hf)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            peft_model = peft.get_peft_model(hf, peft_config)
        except (ValueError, TypeError, AttributeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelscaleError(
                f"peft could not add {config.type} to {type(hf).__name__}: {first}"
            ) from None
    _install_hooks(peft_model, hf)
    model.hf = peft_model
    return peft_model, notes


def _apply(model: nn.Module, config: TechniqueConfig, ctx: ApplyContext) -> ChangeRecord:
    _hf_wrapper(model, config.type)
    before = count_params(model)
    peft_model, notes = _wrap(model, config)
    encoder = peft_model.prompt_encoder["default"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    limit = peft_model.modelscale_position_limit
    task_type = peft_model.active_peft_config.task_type
    if limit is not None:
        notes.append(
            f"learned positions: inputs may have at most {limit - config.num_virtual_tokens} tokens "
            f"({limit} positions − {config.num_virtual_tokens} virtual)"
        )
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=[
            {
                "name": "hf.prompt_encoder.default",
                "kind": type(encoder).__name__,
                "params": sum(p.numel() for p in encoder.parameters()),
            }
        ],
        summary={
            "num_virtual_tokens": config.num_virtual_tokens,
            "peft_task_type": getattr(task_type, "value", str(task_type)),
            **param_summary(model, before),
        },
        notes=notes,
        state={"trainable": trainable},
    )


def _restore(model: nn.Module, config: TechniqueConfig, record: ChangeRecord) -> None:
    """Rebuild the same PeftModel around a fresh base so the saved weights load strictly."""
    _hf_wrapper(model, config.type)
    _wrap(model, config)


@register(PromptTuningConfig, restore=_restore, applies_to="hf", strength="num_virtual_tokens")
def prompt_tuning(model: nn.Module, config: PromptTuningConfig, ctx: ApplyContext) -> ChangeRecord:
    """Prompt tuning (via peft) on an hf: model: trainable virtual-token embeddings, frozen model."""
    return _apply(model, config, ctx)


@register(PrefixTuningConfig, restore=_restore, applies_to="hf", strength="num_virtual_tokens")
def prefix_tuning(model: nn.Module, config: PrefixTuningConfig, ctx: ApplyContext) -> ChangeRecord:
    """Prefix tuning (via peft) on an hf: model: trainable per-layer keys/values, frozen model."""
    return _apply(model, config, ctx)


# --- peft's own adapter format ---------------------------------------------------------------------
def _peft_model_of(model: nn.Module) -> Any:
    peft = _peft()
    hf = getattr(model, "hf", model)
    if not isinstance(hf, peft.PeftModel):
        raise ModelscaleError(
            "the model carries no peft adapter; apply prompt_tuning or prefix_tuning to an hf: model first"
        )
    return hf


def save_peft_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapter of `model` (HFLogits around a PeftModel) in peft's format into folder `path`."""
    peft_model = _peft_model_of(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)
    return path


def load_peft_adapter(model: nn.Module, path: str | Path, *, trainable: bool = False) -> nn.Module:
    """Put the adapter saved in folder `path` on `model` (in place) and return it.

    `model` is either the plain `hf:` base model (a PeftModel is built around `model.hf` from the
    folder; `trainable=True` leaves the adapter trainable) or one that already carries the same kind
    of adapter (its weights are replaced). With `projection=True` peft stores the computed prefixes,
    not the MLP that made them, so such an adapter loads only into the base model (and then trains
    the prefixes directly).
    """
    peft = _peft()
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ModelscaleError(
            f"{path} holds no adapter_config.json; give a folder written by save_peft_adapter"
        )
    hf = getattr(model, "hf", None)
    if isinstance(hf, peft.PeftModel):
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        saved = peft.PeftConfig.from_pretrained(str(path))
        active = hf.active_peft_config
        if (saved.peft_type, saved.num_virtual_tokens) != (active.peft_type, active.num_virtual_tokens):
            raise ModelscaleError(
                f"{path} holds a {saved.peft_type.value} adapter with {saved.num_virtual_tokens} tokens, the model "
                f"a {active.peft_type.value} one with {active.num_virtual_tokens}; load into the base model instead"
            )
        if getattr(active, "prefix_projection", False):
            raise ModelscaleError(
                "peft's format stores the computed prefixes without the projection MLP; "
                "load the adapter into the base model (the one without prefix tuning)"
            )
        try:
            result = set_peft_model_state_dict(hf, load_peft_weights(str(path), device="cpu"))
        except RuntimeError as exc:  # a shape mismatch (e.g. another projection width)
            first = str(exc).strip().splitlines()[0]
            raise ModelscaleError(f"the adapter in {path} does not fit this model: {first}") from None
        # the prompt table is loaded into the prompt encoder separately, after load_state_dict
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if k != "prompt_embeddings"]
        if unexpected:
            raise ModelscaleError(
                f"{path} holds {unexpected[0]!r} that this model lacks; use the same config"
            )
        return model
    _hf_wrapper(model, "load_peft_adapter")
    try:
        peft_model = peft.PeftModel.from_pretrained(hf, str(path), is_trainable=trainable)
    except (ValueError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelscaleError(f"cannot load the adapter in {path}: {first}") from None
    if not trainable:
        peft_model.requires_grad_(False)
    _install_hooks(peft_model, hf)
    model.hf = peft_model
    return model
