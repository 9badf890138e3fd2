"""Who may allow code to run on load: the user, never a file.

Loading a pickle (`torch.load(weights_only=False)`) or a model's custom code (`trust_remote_code`) runs
arbitrary Python. Only the person at the keyboard can allow the first, with `--allow-pickle` on the
command line or `allow_pickle=True` in a Python call; modelscale never allows the second. Anything read
from a file — a saved model folder's `modelscale.json`, a recipe, a study, a sweep or a search space —
passes its model options through `file_options`, which strips the trust keys and refuses a file that
asks for them when the user has not opted in.

Example::

    options = file_options(manifest["model"], where="runs/x/modelscale.json", allow_pickle=False)
    build_model(**options, allow_pickle=False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelscale.core.errors import ModelscaleError

PICKLE_KEY = "allow_pickle"
REMOTE_CODE_KEY = "trust_remote_code"
TRUST_KEYS = (PICKLE_KEY, REMOTE_CODE_KEY)
OPT_IN = "--allow-pickle on the command line (Python: allow_pickle=True)"


def file_options(options: Mapping[str, Any] | None, *, where: str, allow_pickle: bool) -> dict[str, Any]:
    """`options` read from a file, without the keys that would let the file grant itself trust.

    A file asking for `trust_remote_code` is always refused (modelscale never runs a model's own
    code). A file asking for `allow_pickle` is refused unless the user opted in; with the user's
    opt-in the key is dropped and the user's own flag governs the load.
    """
    options = dict(options or {})
    remote = options.pop(REMOTE_CODE_KEY, None)
    if remote is not None:
        raise ModelscaleError(
            f"{where} asks for {REMOTE_CODE_KEY}: {remote!r}; modelscale never runs a model's custom code "
            "— remove the key and use a model that standard transformers classes load"
        )
    asked = options.pop(PICKLE_KEY, None)
    if asked is not None and not allow_pickle:
        weights = options.get("weights")
        target = f" for {weights}" if weights else ""
        raise ModelscaleError(
            f"{where} asks for {PICKLE_KEY}: {asked!r}{target}, which would run pickled code from a file; "
            f"a file cannot grant that — if you trust it, pass {OPT_IN}"
        )
    return options
