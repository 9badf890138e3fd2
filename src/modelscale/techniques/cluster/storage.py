"""Real storage of a clustered weight: a small codebook plus indices packed at `bits` bits each.

A clustered layer of n weights with a (channels × entries) codebook needs
    channels · entries · sizeof(codebook dtype)  +  ⌈n · bits / 8⌉  bytes
instead of n · sizeof(weight dtype). `pack_indices` / `unpack_indices` produce and read exactly that
byte stream (most significant bit first), so the reported figure is the length of a real array.

Example::

    packed = pack_indices(indices, bits=4)          # numpy uint8, ceil(n * 4 / 8) bytes
    assert (unpack_indices(packed, bits=4, count=indices.numel()) == indices.flatten().numpy()).all()
    print(codebook_bytes(model.fc)["packed_bytes"])  # codebook + packed indices of one layer
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from modelscale.core.encodings import pack_indices, unpack_indices
from modelscale.core.errors import ModelscaleError

__all__ = ["codebook_bytes", "export_packed", "pack_indices", "packed_size", "unpack_indices"]

_CODEBOOK_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}


def packed_size(numel: int, bits: int, codebook_entries: int, codebook_itemsize: int = 4) -> int:
    """Bytes of a codebook of `codebook_entries` values plus `numel` indices packed at `bits` bits."""
    return codebook_entries * codebook_itemsize + math.ceil(numel * bits / 8)


def codebook_bytes(
    module: nn.Module, name: str = "weight", *, codebook_dtype: str | None = None
) -> dict[str, Any]:
    """Dense vs. clustered storage of `module.<name>` (which must be clustered).

    `codebook_dtype` ("float32" | "float16" | "bfloat16") prices the codebook in that dtype; by default
    it is priced in the dtype it is held in. The fixed zero centroid of a pruned layer is implicit
    (not stored). Returns bits, numel, dense_bytes, codebook_bytes, index_bytes, packed_bytes, ratio.
    """
    from modelscale.techniques.cluster.kmeans import get_clusters

    clustered = get_clusters(module, name)
    if clustered is None:
        raise ModelscaleError(f"{type(module).__name__}.{name} is not clustered; apply weight_cluster first")
    if codebook_dtype is None:
        itemsize = clustered.codebook.element_size()
    elif codebook_dtype in _CODEBOOK_DTYPES:
        itemsize = _CODEBOOK_DTYPES[codebook_dtype]
    else:
        raise ModelscaleError(
            f"codebook_dtype must be one of {', '.join(_CODEBOOK_DTYPES)}; got {codebook_dtype!r}"
        )
    numel = clustered.indices.numel()
    codebook = clustered.codebook.numel() * itemsize
    index = math.ceil(numel * clustered.bits / 8)
    dense = numel * clustered.codebook.element_size()
    return {
        "bits": clustered.bits,
        "numel": numel,
        "dense_bytes": dense,
        "codebook_bytes": codebook,
        "index_bytes": index,
        "packed_bytes": codebook + index,
        "ratio": (codebook + index) / dense if dense else 1.0,
    }


def export_packed(module: nn.Module, name: str = "weight") -> dict[str, Any]:
    """The packed form of a clustered weight: codebook (numpy, its dtype), packed indices, shape, bits."""
    from modelscale.techniques.cluster.kmeans import get_clusters

    clustered = get_clusters(module, name)
    if clustered is None:
        raise ModelscaleError(f"{type(module).__name__}.{name} is not clustered; apply weight_cluster first")
    return {
        "bits": clustered.bits,
        "shape": list(clustered.indices.shape),
        "zero_centroid": clustered.zero_centroid,
        "codebook": clustered.codebook.detach().float().cpu().numpy(),
        "indices": pack_indices(clustered.indices, clustered.bits),
    }
