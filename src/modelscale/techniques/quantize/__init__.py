"""Quantization: dynamic and static int8, quantization-aware training (QAT), weight-only int8/int4
(group-wise), and fp16/bf16/fp8 storage casts.

Each technique swaps the targeted Linear/Conv2d layers for small modules that keep their codes and
scales as buffers (see `common.py`), so quantized models save to safetensors and reload without pickle.
`quantized_bytes(model)` reports the bytes each format really takes.

Example::

    from modelscale import apply
    from modelscale.techniques.quantize import WeightOnlyConfig, quantized_bytes
    q = apply(model, WeightOnlyConfig(bits=4, group_size=32, target={"exclude": ["classifier"]})).model
    print(quantized_bytes(q)["ratio"])
"""

from modelscale.techniques.quantize.cast import CastConfig, CastLayer
from modelscale.techniques.quantize.common import QuantizedLayer, quantized_bytes, sqnr_db
from modelscale.techniques.quantize.dynamic_int8 import DynamicInt8Config, DynamicInt8Linear
from modelscale.techniques.quantize.qat import QATConfig, convert_qat
from modelscale.techniques.quantize.static_int8 import StaticInt8Config
from modelscale.techniques.quantize.weight_only import WeightOnlyConfig, WeightOnlyLayer

__all__ = [
    "CastConfig",
    "CastLayer",
    "DynamicInt8Config",
    "DynamicInt8Linear",
    "QATConfig",
    "QuantizedLayer",
    "StaticInt8Config",
    "WeightOnlyConfig",
    "WeightOnlyLayer",
    "convert_qat",
    "quantized_bytes",
    "sqnr_db",
]
