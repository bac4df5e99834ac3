"""Special tokens never receive loss, and the recorder writes them as special and loss-masked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import opdwatch
from opdwatch.recorder import Recorder, RecorderSettings
from opdwatch.trainer.data.special_tokens import mask_special_tokens, special_mask, special_token_ids
from opdwatch.trainer.objectives.objective import clipped_surrogate_loss, full_vocab_kl
from opdwatch.trainer.objectives.objective_topk import teacher_topk, topk_reverse_kl_loss


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A chat-style tokenizer: named specials <pad>/<eos>/<unk>, template markers, and a non-special added token."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "a": 3, "b": 4, "c": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tok.add_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True),
                    AddedToken("<word>", special=False)])
    return tok


def test_special_ids_include_template_markers_not_plain_added_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = special_token_ids(tokenizer)
    assert ids == sorted(tokenizer.convert_tokens_to_ids(["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>"]))
    assert tokenizer.convert_tokens_to_ids("<word>") not in ids


def _batch(tokenizer: PreTrainedTokenizerFast) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["<|im_start|> a b <|im_end|> c <eos>", "a <word> <|im_start|> b c <eos>"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    T = max(map(len, rows)) + 1  # one padding column
    tokens = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1.0
    return tokens, mask


def test_mask_drops_specials_but_keeps_eos_when_asked(tokenizer: PreTrainedTokenizerFast) -> None:
    tokens, mask = _batch(tokenizer)
    specials = special_token_ids(tokenizer)
    eos = tokenizer.eos_token_id
    masked = mask_special_tokens(tokens, mask, specials, keep_ids=[eos])
    is_special = special_mask(tokens, specials)
    assert torch.all(masked[is_special & (tokens != eos)] == 0)
    assert torch.all(masked[tokens == eos] == 1)
    assert torch.equal(masked[~is_special], mask[~is_special])  # ordinary tokens untouched, padding stays 0
    assert torch.all(mask_special_tokens(tokens, mask, specials)[tokens == eos] == 0)  # no keep: EOS dropped too
    assert masked.dtype == mask.dtype


def test_special_tokens_never_receive_loss(tokenizer: PreTrainedTokenizerFast) -> None:
    """Gradient of every objective wrt the student's logits is exactly zero at masked special positions."""
    tokens, mask = _batch(tokenizer)
    specials = special_token_ids(tokenizer)
    loss_mask = mask_special_tokens(tokens, mask, specials, keep_ids=[tokenizer.eos_token_id])
    g = torch.Generator().manual_seed(0)
    B, T, V = tokens.shape[0], tokens.shape[1], len(tokenizer)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    ref, teacher = torch.randn(B, T, V, generator=g), torch.randn(B, T, V, generator=g)
    logp = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(2)
    old, adv = logp.detach() - 0.1, torch.randn(B, T, generator=g)
    losses = [clipped_surrogate_loss(logp, old, adv, loss_mask, 0.2), full_vocab_kl(logits, ref, loss_mask),
              topk_reverse_kl_loss(logits, teacher_topk(teacher, 4), loss_mask)]
    dropped = special_mask(tokens, specials) & (tokens != tokenizer.eos_token_id)
    assert dropped.sum() >= 3
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.all(grad[dropped] == 0)
        assert grad[loss_mask.bool()].abs().sum() > 0


def test_recorder_marks_specials_and_their_loss_mask(tokenizer: PreTrainedTokenizerFast, tmp_path) -> None:
    tokens, mask = _batch(tokenizer)
    specials = special_token_ids(tokenizer)
    loss_mask = mask_special_tokens(tokens, mask, specials, keep_ids=[tokenizer.eos_token_id])
    lengths = mask.sum(1).long()
    rec = Recorder.create(tmp_path / "run", tokenizer_info={"eos_token_ids": [tokenizer.eos_token_id],
                                                            "special_token_ids": specials},
                          settings=RecorderSettings(tail_window=8, tail_threshold=0.5))
    logp = -torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1))
    rec.record_step(1, token_ids=tokens, lengths=lengths, student_logp=logp, teacher_logp=logp - 0.5,
                    loss_mask=loss_mask.bool(), finish_reasons=["eos", "eos"],
                    texts=tokenizer.batch_decode([r[:n] for r, n in zip(tokens.tolist(), lengths.tolist())]))
    rec.close()
    rows = opdwatch.open_run(tmp_path / "run").tokens().collect().sort(["rollout", "position"])
    token_ids = rows["token_id"].to_numpy()
    is_special = np.isin(token_ids, specials)
    assert np.array_equal(rows["special"].to_numpy(), is_special)
    assert not rows.filter(rows["special"] & ~rows["eos"])["loss_mask"].any()
    assert rows.filter(~rows["special"] | rows["eos"])["loss_mask"].all()
