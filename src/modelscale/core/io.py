"""Safe file io: atomic writes (never a half-written file) and safe loading of checkpoints.

`torch.load` runs with `weights_only=True` unless the caller opts in to executing pickled code.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def read_structured(path: str | Path) -> Any:
    """Read JSON or YAML (by extension) with a one-line error for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ModelscaleError(f"file not found: {path}; check the path")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return load_yaml(text, where=str(path))
        return json.loads(text)
    except ModelscaleError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelscaleError(f"cannot parse {path}: {first}; fix the file's syntax") from None


MAX_YAML_NODES = 100_000  # nodes after expanding aliases: a recipe or study is far smaller
_E_FLOAT = r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"


def _yaml_loader() -> Any:
    """yaml.SafeLoader that also reads 3e-4 and 1e6 as numbers (YAML 1.1 wants a dot: 3.0e-4)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_E_FLOAT), list("-+0123456789."))
    return Loader


def load_yaml(text: str, *, where: str = "YAML") -> Any:
    """Safe YAML with e-notation numbers and a cap on alias expansion (no 'billion laughs')."""
    import yaml

    loader = _yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def size(n: Any) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            sizes[id(n)] = MAX_YAML_NODES + 1  # a cycle counts as too large
            if isinstance(n, yaml.SequenceNode):
                total = 1 + sum(size(c) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                total = 1 + sum(size(k) + size(v) for k, v in n.value)
            else:
                total = 1
            sizes[id(n)] = min(total, MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_YAML_NODES:
            raise ModelscaleError(
                f"{where}: expanding its aliases (&/*) gives more than {MAX_YAML_NODES:,} values; "
                "write the values out or use fewer nested aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_scalar(text: str) -> Any:
    """One command-line value read as YAML (numbers, e-notation, lists, null); text if it is not YAML."""
    try:
        return load_yaml(text, where="the option value")
    except ModelscaleError:
        raise
    except Exception:  # noqa: BLE001 - not YAML: the text itself
        return text


def save_torch(obj: Any, path: str | Path) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTOCOLS = range(2, 6)  # legacy torch.save files open with a pickle protocol 2-5 header


def _looks_like_torch_file(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(_ZIP_MAGIC):
        return True
    return len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS


def load_torch(path: str | Path, *, allow_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """torch.load with `weights_only=True` unless `allow_pickle`; clear one-line errors.

    A file that is neither torch's zip format nor a pickle is "not a weights file" — never a reason to
    suggest the unsafe opt-in."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelscaleError(f"checkpoint not found: {path}; check the path")
    if not _looks_like_torch_file(path):
        raise ModelscaleError(
            f"{path} is not a weights file (neither safetensors nor a PyTorch checkpoint); "
            "pass a .safetensors file or a torch.save'd state dict"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if not allow_pickle and "weights_only" in str(exc):
            raise ModelscaleError(
                f"{path} contains pickled Python objects, which can run code; "
                "if you trust the file, pass allow_pickle=True (CLI: --allow-pickle)"
            ) from None
        raise ModelscaleError(f"{path} is corrupt or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelscaleError(
            f"{path} is corrupt or not a PyTorch checkpoint ({type(exc).__name__})"
        ) from None
