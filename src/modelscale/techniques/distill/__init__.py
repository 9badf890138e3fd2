"""Knowledge distillation: a `fit` callback (soft targets + optional feature hints) and `distill()`.

Distillation changes the training loss, not the model, so it is not a registered technique.

Example::

    from modelscale.techniques.distill import DistillConfig, distill
    distill(student, teacher, data, TrainConfig(epochs=20), DistillConfig(alpha=0.3, temperature=4))
"""

from __future__ import annotations

from modelscale.techniques.distill.features import FeatureHints, make_projection
from modelscale.techniques.distill.kd import DistillConfig, Distiller, distill, kd_loss, soft_loss

__all__ = ["DistillConfig", "Distiller", "FeatureHints", "distill", "kd_loss", "make_projection", "soft_loss"]
