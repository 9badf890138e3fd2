"""The tiny MLP, CNN and transformer of the contract suite, from `modelscale.testing` (one definition)."""

from __future__ import annotations

from functools import partial

from modelscale.testing import TinyTransformer, tiny_inputs, tiny_model

tiny_mlp = partial(tiny_model, "mlp")
tiny_cnn = partial(tiny_model, "cnn")
tiny_transformer = partial(tiny_model, "transformer")
inputs_for = tiny_inputs
BUILDERS = {"mlp": tiny_mlp, "cnn": tiny_cnn, "transformer": tiny_transformer}

__all__ = ["BUILDERS", "TinyTransformer", "inputs_for", "tiny_cnn", "tiny_mlp", "tiny_transformer"]
