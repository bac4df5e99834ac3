"""Where each sampled token ends in the decoded response text, for the recorder's ``char_end`` column (the
dashboard and notebooks show a rollout's text split into its tokens)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from transformers import PreTrainedTokenizerBase


@lru_cache(maxsize=4)
def _piece_lengths(tok: PreTrainedTokenizerBase) -> np.ndarray:
    """(V,) characters each token id decodes to on its own (0 for special tokens, which are skipped)."""
    return np.array([len(tok.decode([i], skip_special_tokens=True)) for i in range(len(tok))], dtype=np.int64)


def char_ends(tok: PreTrainedTokenizerBase, responses: list[list[int]], texts: list[str]) -> list[np.ndarray] | None:
    """Per-rollout end offsets of every token in ``texts`` (``tok.batch_decode(responses,
    skip_special_tokens=True)``), or None when decoding token by token does not add up to the text (byte-level
    BPE merges, cleanup of spaces): the recorder then stores no offsets rather than wrong ones."""
    lengths = _piece_lengths(tok)
    out = []
    for ids, text in zip(responses, texts, strict=True):
        ends = np.cumsum(lengths[np.asarray(ids, dtype=np.int64)]) if len(ids) else np.zeros(0, dtype=np.int64)
        if (ends[-1] if len(ends) else 0) != len(text):
            return None
        out.append(ends)
    return out
