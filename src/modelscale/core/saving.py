"""Save a (possibly compressed) model as weights + the records of what was applied; reload without pickle.

Layout of a saved folder::

    model.safetensors   the weights (shared tensors stored once; masks baked, cluster indices bit-packed,
                        optionally sparse-encoded: see `modelscale.core.weights_file`)
    modelscale.json     {"format": 1, "model": <spec or null>, "records": [...], "meta": {...},
                         "storage": "dense" | "sparse"}

Reloading (`load_into`) takes a fresh base model (`modelscale.load_compressed` builds it from the stored
spec through the model zoo), replays each record's restore function to recreate the changed structure,
then loads the weights strictly. No pickled code is ever executed unless the caller passes `allow_pickle=True`: the
folder's manifest can never grant that itself (see `modelscale.core.trust`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from modelscale.core.apply import ChangeRecord, restore
from modelscale.core.errors import ModelscaleError
from modelscale.core.io import atomic_path, write_json
from modelscale.core.trust import file_options
from modelscale.core.weights_file import check_storage, read_weights, write_weights

FORMAT_VERSION = 1


def save_compressed(
    path: str | Path,
    model: nn.Module,
    records: list[ChangeRecord] | None = None,
    *,
    model_spec: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    storage: str = "dense",
) -> Path:
    """Write `model` and the records of the steps applied to it into folder `path`.

    `storage` is how the weights file stores tensors: "dense" (masked weights baked, so a pruned model
    is never larger than its baseline) or "sparse" (bitmask / CSR where smaller); recorded in the
    manifest and in the file."""
    check_storage(storage)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "model.safetensors") as tmp:
        write_weights(tmp, model, storage)
    manifest = {
        "format": FORMAT_VERSION,
        "model": model_spec,
        "records": [r.to_dict() for r in records or []],
        "meta": meta or {},
        "storage": storage,
    }
    write_json(path / "modelscale.json", manifest)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest_file = path / "modelscale.json"
    if not manifest_file.is_file():
        raise ModelscaleError(f"{path} is not a saved modelscale model (no modelscale.json); check the path")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ModelscaleError(f"{manifest_file} is corrupt; re-save the model") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelscaleError(
            f"{manifest_file} has format {manifest.get('format')!r}; expected {FORMAT_VERSION}"
        )
    return manifest


def stored_spec(path: str | Path, manifest: dict[str, Any], *, allow_pickle: bool = False) -> dict[str, Any]:
    """The manifest's model spec, safe to pass to `build_model(**spec)`.

    Keys that would let the file grant itself trust are refused (or, with the user's own
    `allow_pickle`, dropped); a relative `weights` path is read relative to the folder.
    """
    spec = manifest.get("model")
    if not spec:
        raise ModelscaleError(f"{path} stores no model spec; pass the base model to load_compressed")
    if not isinstance(spec, dict):
        raise ModelscaleError(
            f"{Path(path) / 'modelscale.json'} has a malformed model spec; re-save the model"
        )
    spec = file_options(spec, where=str(Path(path) / "modelscale.json"), allow_pickle=allow_pickle)
    weights = spec.get("weights")
    if isinstance(weights, str) and not Path(weights).is_absolute():
        spec["weights"] = str(Path(path) / weights)
    return spec


def load_into(path: str | Path, base_model: nn.Module) -> nn.Module:
    """Replay the saved records on `base_model` (a fresh, uncompressed model of the stored architecture),
    then load the folder's weights strictly. `modelscale.load_compressed` builds that model from the
    stored spec through the model zoo."""
    path = Path(path)
    manifest = read_manifest(path)
    for record in manifest["records"]:
        restore(base_model, ChangeRecord.from_dict(record))
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelscaleError(f"{weights} is missing; re-save the model")
    try:
        read_weights(weights, base_model)
    except ModelscaleError:
        raise
    except Exception as exc:  # name the real cause: a corrupt file, a misfit, memory, or the model's own code
        first = " ".join(str(exc).split())[:300]
        if type(exc).__module__.startswith("safetensors"):
            raise ModelscaleError(f"{weights} is corrupt ({first}); re-save the model") from None
        if isinstance(exc, MemoryError):
            raise ModelscaleError(
                f"out of memory loading {weights}; free memory or load on a larger machine"
            ) from None
        if isinstance(exc, RuntimeError) and any(
            key in str(exc) for key in ("Missing key", "Unexpected key", "size mismatch")
        ):
            raise ModelscaleError(f"weights in {weights} do not fit the model: {first}") from None
        raise ModelscaleError(
            f"loading {weights} into {type(base_model).__name__} failed ({type(exc).__name__}: {first}); "
            "rebuild the base model with the architecture the folder was saved from"
        ) from None
    return base_model
