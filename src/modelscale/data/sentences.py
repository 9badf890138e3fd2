"""Real English sentences from a text corpus (docstrings and comments of the Python standard library).

`pystdlib_sentences(split="test")` takes the bytes of one split of `load_data("pystdlib")` (train, val
and test are contiguous, disjoint byte ranges), strips comment and quote markers, cuts the text at
sentence ends and keeps prose: at least `min_words` words, mostly letters, no code punctuation. A seeded
sample of `count` distinct sentences is returned, so calibration (train) and evaluation (test) never
share a sentence.

Example::

    calib = pystdlib_sentences("train", count=128)
    held_out = pystdlib_sentences("test", count=256)
"""

from __future__ import annotations

import random
import re

from modelscale.core.errors import ModelscaleError

_CODE = re.compile(r"[=(){}\[\]<>_\\|@$`*]|\bdef\b|\bself\b|\breturn\b|\bimport\b|::|->|\.\w+\(")
_MARKERS = re.compile(r'^\s*(#+|"""|\'\'\'|"|\')\s*')


def text_sentences(text: str, *, min_words: int = 6, max_chars: int = 240) -> list[str]:
    """Distinct prose sentences of `text`, in order of first appearance."""
    lines = [_MARKERS.sub("", line).strip() for line in text.splitlines()]
    joined = "\n".join(lines)
    seen: set[str] = set()
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", joined):
        flat = " ".join(paragraph.split())
        for sentence in re.split(r"(?<=[.!?])\s+", flat):
            sentence = sentence.strip(" \"'")
            words = sentence.split()
            if len(words) < min_words or len(sentence) > max_chars or sentence in seen:
                continue
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if letters < 0.9 * len(sentence) or _CODE.search(sentence) or not sentence[0].isupper():
                continue
            seen.add(sentence)
            out.append(sentence)
    return out


def pystdlib_sentences(
    split: str = "test", *, count: int = 256, seed: int = 0, min_words: int = 6
) -> list[str]:
    """A seeded sample of `count` prose sentences from one split of the pystdlib corpus."""
    from modelscale.data import load_data

    if split not in ("train", "val", "test"):
        raise ModelscaleError(f"split must be train, val or test; got {split!r}")
    bundle = load_data("pystdlib", block_size=128)
    data = getattr(bundle, split).data
    sentences = text_sentences(bytes(data.tolist()).decode("utf-8", errors="ignore"), min_words=min_words)
    if len(sentences) < count:
        raise ModelscaleError(
            f"the pystdlib {split} split has {len(sentences)} prose sentences, fewer than {count}"
        )
    return random.Random(seed).sample(sentences, count)
