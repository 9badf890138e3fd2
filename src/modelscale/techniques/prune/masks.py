"""Weight masks kept by parametrization: pruned weights stay exactly zero through any training loop.

`attach_mask(module, "weight", mask)` registers a parametrization computing `original * mask`, so the
effective weight is zero wherever the mask is, whatever an optimizer does to `original` (its
gradient there is zero too). Attaching a second mask intersects it with the first. `bake_masks`
makes the zeros permanent and removes the parametrization (for export).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMask(nn.Module):
    """Parametrization W -> W * mask, with the mask stored as a boolean buffer (saved in state_dict).

    A saved folder stores the masked weight as its effective value (`store_effective`, see
    `core/weights_file.py`): as large as the dense weight, never larger; reloading rebuilds the mask from it.
    """

    store_effective = True

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def state_from_effective(self, effective: torch.Tensor) -> dict[str, torch.Tensor]:
        """This parametrization's buffers from a stored effective weight: the mask is where it is non-zero."""
        return {"mask": effective != 0}


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, WeightMask):
            return p.mask
    return None


def attach_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Keep `module.<name>` zero where `mask` is False (intersecting with an existing mask)."""
    existing = get_mask(module, name)
    if existing is not None:
        existing.logical_and_(mask.to(existing.device))
        return
    weight = getattr(module, name)
    parametrize.register_parametrization(module, name, WeightMask(mask.to(weight.device)), unsafe=True)


def bake_masks(model: nn.Module) -> nn.Module:
    """Make masked zeros permanent and remove the mask parametrizations (in place)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                if any(isinstance(p, WeightMask) for p in module.parametrizations[name]):
                    own_parametrized_class(module)
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def own_parametrized_class(module: nn.Module) -> None:
    """Give `module` its own copy of its parametrized class.

    A deep copy of a parametrized module shares the dynamically made class with the original, and
    removing a parametrization deletes the property from that class, which would break the original.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    return getattr(module, name)
