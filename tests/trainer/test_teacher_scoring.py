"""Chunked teacher scoring equals one forward; EOS is scored as the teacher's own EOS; top-K comes in student ids."""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from opdwatch.trainer.data.eos_canon import resolve_mapping
from opdwatch.trainer.objectives.scoring import build_sequences, response_logits, token_logp
from opdwatch.trainer.objectives.teacher_scoring import score_teacher


def make_tokenizer(specials: dict[str, int], eos: str, added: list[str] = ()) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({**specials, "a": 3, "b": 4, "c": 5, "d": 6}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token="<pad>", unk_token="<unk>")
    tok.add_tokens([AddedToken(a, special=True) for a in added])
    return tok


def tiny_teacher(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=32)).eval()


def test_chunked_scoring_equals_one_forward() -> None:
    teacher = tiny_teacher(8)
    prompts = [[3, 4], [5], [3, 3, 6], [4]]
    responses = [[5, 6, 1], [3], [4, 4, 4, 4], [6, 1]]
    seq = build_sequences(prompts, responses, pad_id=0)
    whole = score_teacher(teacher, seq, k=3, student_vocab_size=8)
    chunked = score_teacher(teacher, seq, k=3, student_vocab_size=8, chunk_rows=1)
    torch.testing.assert_close(chunked.logp_BT, whole.logp_BT)
    torch.testing.assert_close(chunked.topk.logp_BTK, whole.topk.logp_BTK)
    assert torch.equal(chunked.topk.ids_BTK, whole.topk.ids_BTK)
    with torch.no_grad():
        direct = token_logp(response_logits(teacher, seq), seq.tokens_BT).where(seq.mask_BT.bool(), torch.zeros(()))
    torch.testing.assert_close(whole.logp_BT, direct)
    assert torch.all(whole.logp_BT[seq.mask_BT == 0] == 0)


def test_student_eos_is_scored_as_teacher_eos_and_topk_is_in_student_ids() -> None:
    student = make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>")
    teacher_tok = make_tokenizer({"<pad>": 0, "<s>": 1, "<unk>": 2}, "</s>", added=["</s>"])  # </s> = 7
    mapping = resolve_mapping(student, teacher_tok, "auto")
    teacher = tiny_teacher(len(teacher_tok))
    seq = build_sequences([[3, 4]], [[5, 6, student.eos_token_id]], pad_id=0)
    scores = score_teacher(teacher, seq, mapping=mapping, k=len(student), student_vocab_size=len(student))
    teacher_ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        logp = torch.log_softmax(teacher(input_ids=teacher_ids).logits, -1)
    assert float(scores.logp_BT[0, 2]) == float(logp[0, 3, 7])  # EOS position: log pi_T(</s> | a b c d)
    eos_slot = scores.topk.ids_BTK[0, 2] == 1  # the student's EOS id carries the teacher's EOS mass
    assert float(scores.topk.logp_BTK[0, 2][eos_slot]) == float(logp[0, 3, 7])
    assert int(scores.topk.ids_BTK.max()) < len(student)
