"""One-shot compression for transformers and LLMs, calibrated layer by layer: GPTQ, AWQ, SparseGPT, Wanda.

`calibrate.py` runs the calibration inputs through the model one block at a time (each block fed the
compressed previous block, so memory stays at one block's activations); each technique compresses the
block's Linear / Hugging Face Conv1D layers from their input statistics: `gptq` (2/3/4/8-bit, Hessian-based
error correction), `awq` (activation-aware per-channel scales, then round-to-nearest or GPTQ), `sparsegpt`
(pruning with weight reconstruction, unstructured or N:M, optionally quantized jointly) and `wanda`
(|W|·‖X‖₂ pruning, no update). Quantized layers use the weight-only storage, so the file shrinks.

Example::

    from modelscale import apply
    from modelscale.techniques.oneshot.gptq import GPTQConfig
    result = apply(model, GPTQConfig(bits=4, calibration_data="pystdlib", seq_len=128))
"""
