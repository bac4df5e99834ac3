"""opdwatch.trainer.data.offsets: token end offsets into the decoded text, or None when they would be wrong."""

from __future__ import annotations

import numpy as np

from opdwatch.trainer.data.offsets import char_ends
from opdwatch.trainer.recipes.demo.tokenizer import build_char_tokenizer


def test_char_tokenizer_offsets_split_the_text_exactly():
    tok = build_char_tokenizer()
    texts_in = ["14+3=17. 17-5=12.", "1-6=1. 1-6=1."]
    responses = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts_in]
    texts = tok.batch_decode(responses, skip_special_tokens=True)
    ends = char_ends(tok, responses, texts)
    assert ends is not None
    for ids, text, e in zip(responses, texts, ends, strict=True):
        assert len(e) == len(ids) and e[-1] == len(text)
        starts = np.concatenate([[0], e[:-1]])
        pieces = [text[a:b] for a, b in zip(starts, e, strict=True)]
        assert "".join(pieces) == text and pieces[-1] == ""  # EOS decodes to nothing


def test_offsets_that_do_not_add_up_are_refused():
    tok = build_char_tokenizer()
    responses = [tok.encode("12+3", add_special_tokens=False)]
    assert char_ends(tok, responses, ["12+3 and more"]) is None
