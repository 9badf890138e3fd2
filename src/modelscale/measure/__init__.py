"""Measuring models: pure functions that return small, serializable dataclass reports.

Nothing here changes the model it measures. Every report has `to_dict()` (JSON-safe) and
`from_dict()`; rendering lives in `modelscale.report`.

Example::

    from modelscale.measure import compare, profile
    report = profile(model, torch.randn(1, 1, 8, 8), loader=test_loader)
    cmp = compare(model, pruned, torch.randn(32, 1, 8, 8), loader=test_loader)
    print(cmp.theoretical_speedup, cmp.measured_speedup, cmp.deltas)
"""

from modelscale.measure.compare import Comparison, compare
from modelscale.measure.latency import LatencyPair, LatencyReport, measure_latency, measure_latency_pair
from modelscale.measure.macs import LayerMacs, MacsReport, count_macs
from modelscale.measure.memory import MemoryReport, measure_memory
from modelscale.measure.params import ParamReport, count_params, effective_parameters
from modelscale.measure.profile import ProfileReport, profile
from modelscale.measure.quality import QualityReport, evaluate_quality, expected_calibration_error
from modelscale.measure.similarity import (
    PairedQuality,
    capture_activations,
    layer_cka,
    linear_cka,
    paired_pass,
    prediction_agreement,
)
from modelscale.measure.size import SizeReport, effective_state_dict, measure_size

__all__ = [
    "Comparison",
    "LatencyPair",
    "LatencyReport",
    "LayerMacs",
    "MacsReport",
    "MemoryReport",
    "PairedQuality",
    "ParamReport",
    "ProfileReport",
    "QualityReport",
    "SizeReport",
    "capture_activations",
    "compare",
    "count_macs",
    "count_params",
    "effective_parameters",
    "effective_state_dict",
    "evaluate_quality",
    "expected_calibration_error",
    "layer_cka",
    "linear_cka",
    "measure_latency",
    "measure_latency_pair",
    "measure_memory",
    "measure_size",
    "paired_pass",
    "prediction_agreement",
    "profile",
]
