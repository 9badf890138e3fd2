"""Train-time image augmentation with plain tensor ops: random crop after zero padding, optional flip.

Applied to the train split only (val and test stay untouched, so accuracy is measured on the same
pixels every time). Works on one `(C, H, W)` float tensor at a time; no PIL needed.

Example::

    from modelscale.data import AugmentConfig, load_data
    data = load_data("digits", augment=AugmentConfig(crop_padding=1))
    x, y = data.train[0]          # a randomly shifted copy of the first training digit
    x_test, _ = data.test[0]      # never augmented
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from modelscale.core.config import Config, check_range, param


@dataclass(kw_only=True)
class AugmentConfig(Config):
    """Random crop with padding and (opt-in) horizontal flip for image training data."""

    type: ClassVar[str] = "augment"

    crop_padding: int = param(
        1, "pixels of padding added on every side before a random crop back to the input size; 0 = no crop"
    )
    padding_mode: Literal["constant", "reflect", "replicate"] = param(
        "constant", "how padded pixels are filled: constant (zeros), reflect or replicate the border"
    )
    hflip: bool = param(
        False, "flip left-right with probability 0.5; off by default since flipping changes digits and text"
    )

    def validate(self) -> None:
        check_range("crop_padding", self.crop_padding, 0, 64)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip


def augment_image(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One randomly augmented copy of image `x` (C, H, W); randomness comes only from `generator`."""
    pad = config.crop_padding
    if pad > 0:
        h, w = x.shape[-2:]
        padded = F.pad(x.unsqueeze(0), (pad, pad, pad, pad), mode=config.padding_mode).squeeze(0)
        top, left = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        x = padded[..., top : top + h, left : left + w]
    if config.hflip and torch.rand((), generator=generator).item() < 0.5:
        x = torch.flip(x, dims=(-1,))
    return x.contiguous()
