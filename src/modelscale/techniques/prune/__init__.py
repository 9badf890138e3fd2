"""Pruning techniques: unstructured magnitude (one shot or gradual), structured (channels, neurons,
heads really removed, via Torch-Pruning's dependency graph) and 2:4 semi-structured.

Example::

    from modelscale import apply
    from modelscale.techniques.prune import MagnitudePruneConfig, StructuredPruneConfig
    sparse = apply(model, MagnitudePruneConfig(amount=0.8, scope="global")).model
    smaller = apply(model, StructuredPruneConfig(ratio=0.5), example_inputs=x).model
"""

from modelscale.techniques.prune.gradual import GradualPruneConfig, GradualPruning
from modelscale.techniques.prune.magnitude import MagnitudePruneConfig
from modelscale.techniques.prune.masks import bake_masks
from modelscale.techniques.prune.semistructured import SemiStructured24Config
from modelscale.techniques.prune.structured import StructuredPruneConfig

__all__ = [
    "GradualPruneConfig",
    "GradualPruning",
    "MagnitudePruneConfig",
    "SemiStructured24Config",
    "StructuredPruneConfig",
    "bake_masks",
]
