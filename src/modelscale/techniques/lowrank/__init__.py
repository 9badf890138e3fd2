"""Low-rank factorization techniques (truncated SVD of Linear and Conv2d weights).

Example::

    from modelscale import apply
    from modelscale.techniques.lowrank import LowRankSVDConfig
    factored = apply(model, LowRankSVDConfig(energy=0.9)).model
"""

from modelscale.techniques.lowrank.svd import LowRankSVDConfig

__all__ = ["LowRankSVDConfig"]
