"""Parameter-efficient fine-tuning: linear probe, BitFit, bottleneck adapters, LoRA; adapter files; transfer helper.

Each technique freezes the backbone and leaves a small set of tensors trainable; its record summary
reports `trainable_params` and `total_params`. `save_adapter` / `load_adapter` store only those.

Example::

    from modelscale import apply
    from modelscale.techniques.peft import LoRAConfig, merge_lora, save_adapter
    result = apply(model, LoRAConfig(rank=4))
    fit(result.model, data, TrainConfig(epochs=10))
    save_adapter(result.model, "adapter.safetensors"); plain = merge_lora(result.model)
"""

from __future__ import annotations

from modelscale.techniques.peft._common import find_head, replace_head
from modelscale.techniques.peft.adapters import AdapterWrapped, BottleneckAdapter, BottleneckAdapterConfig
from modelscale.techniques.peft.bitfit import BitFitConfig
from modelscale.techniques.peft.lora import LoRAConfig, merge_lora
from modelscale.techniques.peft.probe import LinearProbeConfig
from modelscale.techniques.peft.storage import load_adapter, save_adapter
from modelscale.techniques.peft.transfer import METHODS, SUGGESTED_LR, adapt, split_by_classes

__all__ = [
    "METHODS",
    "SUGGESTED_LR",
    "AdapterWrapped",
    "BitFitConfig",
    "BottleneckAdapter",
    "BottleneckAdapterConfig",
    "LinearProbeConfig",
    "LoRAConfig",
    "adapt",
    "find_head",
    "load_adapter",
    "merge_lora",
    "replace_head",
    "save_adapter",
    "split_by_classes",
]
