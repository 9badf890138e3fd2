"""Small fixes that let every torchvision classifier save and reload through safetensors, and train.

- `MNASNet`: torchvision's MNASNet refuses a state dict without version metadata (it reads
  ``_metadata[""]["version"]`` to convert old checkpoints), and a safetensors file stores none. This
  subclass takes a missing version to be the class's own (the file was written from this code); a state
  dict that carries a version is treated exactly as torchvision treats it.
- `drop_aux_heads`: GoogLeNet and Inception v3 are built without their auxiliary training heads (the
  classifier then returns one tensor in train mode too, like every other model). Their published
  checkpoints carry those heads; this load-state-dict pre-hook drops the heads' keys so the checkpoint
  loads strictly.

Imports torchvision: import this module only where torchvision models are built.

Example::

    model = torchvision.models.mnasnet1_0()
    model.__class__ = MNASNet            # now loads a state dict read from safetensors
"""

from __future__ import annotations

from typing import Any

from torchvision.models import mnasnet as _mnasnet

AUX_HEADS = ("aux1.", "aux2.", "AuxLogits.")


class MNASNet(_mnasnet.MNASNet):
    """torchvision's MNASNet that also loads state dicts without version metadata (safetensors)."""

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: dict, *args: Any) -> None:
        if local_metadata.get("version") is None:
            local_metadata = {**local_metadata, "version": self._version}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def drop_aux_heads(_module: Any, state_dict: dict, prefix: str, *_args: Any) -> None:
    """Load-state-dict pre-hook: remove auxiliary-head keys (the model was built without those heads)."""
    for key in [k for k in state_dict if k.startswith(tuple(prefix + head for head in AUX_HEADS))]:
        del state_dict[key]
