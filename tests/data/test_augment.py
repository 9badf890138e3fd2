"""Train-only augmentation: changes train items, never val/test; config validates and round-trips."""

import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.data import AugmentConfig, load_data, make_loader
from modelscale.data.augment import augment_image


def test_augment_changes_train_not_test():
    plain = load_data("digits", seed=0)
    aug = load_data("digits", seed=0, augment=AugmentConfig(crop_padding=2))
    assert torch.equal(aug.train.indices, plain.train.indices)
    changed = sum(not torch.equal(aug.train[i][0], plain.train[i][0]) for i in range(50))
    assert changed >= 30  # a shift of 0 in both directions happens 1/25 of the time
    for i in range(50):
        assert torch.equal(aug.test[i][0], plain.test[i][0])
        assert torch.equal(aug.val[i][0], plain.val[i][0])
    assert aug.train[3][1] == plain.train[3][1]
    assert aug.meta["augment"]["crop_padding"] == 2


def test_crop_is_a_shift_and_flip_mirrors():
    x = torch.arange(16.0).reshape(1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment_image(x, AugmentConfig(crop_padding=1), g)
    assert out.shape == x.shape
    # every non-padded value of the output appears at a shifted position of the input
    shifts = [
        torch.equal(out, torch.nn.functional.pad(x, (1, 1, 1, 1))[:, t : t + 4, s : s + 4])
        for t in range(3)
        for s in range(3)
    ]
    assert any(shifts)
    flipped = {
        tuple(augment_image(x, AugmentConfig(crop_padding=0, hflip=True), g).flatten().tolist())
        for _ in range(20)
    }
    assert flipped == {tuple(x.flatten().tolist()), tuple(x.flip(-1).flatten().tolist())}


def test_flip_off_by_default_and_config():
    cfg = AugmentConfig()
    assert cfg.hflip is False and cfg.type == "augment"
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelscaleError, match="crop_padding"):
        AugmentConfig(crop_padding=-1)
    with pytest.raises(ModelscaleError, match="padding_mode"):
        AugmentConfig(padding_mode="wrap")


def test_augmented_loader_is_reproducible():
    def first_batch():
        data = load_data("digits", seed=0, augment=AugmentConfig(crop_padding=1, hflip=True))
        return next(iter(make_loader(data.train, batch_size=32, shuffle=True, seed=1)))[0]

    assert torch.equal(first_batch(), first_batch())
