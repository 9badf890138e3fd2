"""Weight sharing by clustering: k-means codebooks with packed indices (Deep Compression).

Example::

    from modelscale import apply
    from modelscale.techniques.cluster import WeightClusterConfig
    shared = apply(model, WeightClusterConfig(bits=4)).model
"""

from modelscale.techniques.cluster.kmeans import WeightClusterConfig

__all__ = ["WeightClusterConfig"]
