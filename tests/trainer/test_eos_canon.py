"""EOS canonicalisation with two tokenizers built here whose EOS ids differ."""

from __future__ import annotations

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.data.eos_canon import (
    check_vocabularies,
    merge_stop_columns,
    parse_pairs,
    resolve_mapping,
    teacher_logp_in_student_space,
    to_teacher_ids,
)

WORDS = ["a", "b", "c", "d"]


def make_tokenizer(specials: dict[str, int], eos: str, words: dict[str, int] | None = None,
                   added: list[str] = ()) -> PreTrainedTokenizerFast:
    vocab = {**specials, **(words or {w: 3 + i for i, w in enumerate(WORDS)})}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token="<pad>", unk_token="<unk>")
    tok.add_tokens([AddedToken(a, special=True) for a in added])
    return tok


@pytest.fixture
def student() -> PreTrainedTokenizerFast:
    # student: <eos> = 1
    return make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>")


@pytest.fixture
def teacher() -> PreTrainedTokenizerFast:
    # teacher: id 1 is its BOS <s>, its EOS </s> = 7; ordinary words share ids with the student
    return make_tokenizer({"<pad>": 0, "<s>": 1, "<unk>": 2}, "</s>", added=["</s>"])


def test_identical_tokenizers_need_no_mapping(student: PreTrainedTokenizerFast) -> None:
    other = make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>")
    assert check_vocabularies(student, other).compatible
    mapping = resolve_mapping(student, other)
    assert mapping.is_identity and mapping.student_stop_ids == (1,) and mapping.teacher_eos_id == 1


def test_check_reports_the_eos_difference(student, teacher) -> None:
    check = check_vocabularies(student, teacher)
    assert teacher.eos_token_id == 7 and student.eos_token_id == 1
    assert not check.compatible and not check.same_stop
    assert check.regular_mismatches == ()
    assert check.student_eos == ("<eos>", 1) and check.teacher_eos == ("</s>", 7)
    assert ("<eos>", 1, None) in check.special_mismatches


def test_without_mapping_the_run_refuses_with_one_line(student, teacher) -> None:
    with pytest.raises(OpdwatchError) as err:
        resolve_mapping(student, teacher)
    message = str(err.value)
    assert "\n" not in message
    assert "EOS differs" in message and "'<eos>'=1" in message and "'</s>'=7" in message and "eos_map" in message


def test_with_mapping_a_student_eos_is_scored_as_the_teacher_eos(student, teacher) -> None:
    """Score a student rollout ending in its EOS with a tiny teacher: the EOS position gets log pi_T(</s> | s_t)."""
    mapping = resolve_mapping(student, teacher, "auto")
    assert mapping.student_stop_ids == (1,) and mapping.teacher_eos_id == 7
    ids = torch.tensor([student("a b c", add_special_tokens=False)["input_ids"] + [student.eos_token_id]])
    teacher_ids = to_teacher_ids(ids, mapping)
    assert teacher_ids.tolist() == [[3, 4, 5, 7]]
    assert ids.tolist() == [[3, 4, 5, 1]]  # input untouched
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(teacher), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=32))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=teacher_ids).logits, -1)  # (1, 4, V_t)
    scored = logp[0, 2].gather(0, teacher_ids[0, 3:4])  # teacher log-prob of the last token given "a b c"
    assert float(scored) == float(logp[0, 2, teacher.eos_token_id])
    unmapped = logp[0, 2, ids[0, 3]]  # what the bug scored: the teacher's <s>
    assert float(unmapped) != float(scored)


def test_explicit_pairs_by_id_or_string(student, teacher) -> None:
    assert parse_pairs("1:7", student, teacher) == [(1, 7)]
    assert parse_pairs(" <eos> : </s> ", student, teacher) == [(1, 7)]
    mapping = resolve_mapping(student, teacher, "<eos>:</s>")
    assert dict(mapping.student_to_teacher)[1] == 7
    assert mapping.to_dict()["student_to_teacher"] == {"1": 7}
    with pytest.raises(OpdwatchError, match="does not map the student EOS 1 to the teacher EOS 7"):
        resolve_mapping(student, teacher, "0:0")
    with pytest.raises(OpdwatchError, match="not in the teacher vocabulary"):
        parse_pairs("1:<nope>", student, teacher)
    with pytest.raises(OpdwatchError, match="student:teacher"):
        parse_pairs("17", student, teacher)
    with pytest.raises(OpdwatchError, match="outside the vocabularies"):
        resolve_mapping(student, teacher, "1:99")


def test_both_eos_strings_become_one_stop_event() -> None:
    """A student that also knows the teacher's EOS string stops on either; both are the teacher's EOS."""
    student = make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>", added=["</s>"])  # </s> = 7
    teacher = make_tokenizer({"<pad>": 0, "<s>": 1, "<unk>": 2}, "</s>", added=["<eos>"])  # </s> = 7, <eos> = 8
    mapping = resolve_mapping(student, teacher, "auto")
    assert mapping.student_stop_ids == (1, 7)
    assert to_teacher_ids(torch.tensor([3, 1, 7]), mapping).tolist() == [3, 7, 7]


def test_ordinary_token_mismatch_is_refused_even_with_a_mapping(student) -> None:
    shifted = make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>", words={w: 4 + i for i, w in
                                                                                 enumerate(WORDS)})
    for spec in ("", "auto", "1:1"):
        with pytest.raises(OpdwatchError, match="differ on ordinary tokens"):
            resolve_mapping(student, shifted, spec)


def test_special_mismatch_with_same_eos_needs_a_mapping(student) -> None:
    s = make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>", added=["<|im_start|>"])  # 7
    t = make_tokenizer({"<pad>": 0, "<eos>": 1, "<unk>": 2}, "<eos>", added=["<|user|>", "<|im_start|>"])  # 8
    with pytest.raises(OpdwatchError, match="special tokens differ"):
        resolve_mapping(s, t)
    mapping = resolve_mapping(s, t, "auto")
    assert dict(mapping.student_to_teacher)[7] == 8 and mapping.unresolved_special_ids == ()


def test_teacher_logp_moves_into_student_ids(student, teacher) -> None:
    mapping = resolve_mapping(student, teacher, "auto")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, len(teacher), generator=g, dtype=torch.float64)
    moved = teacher_logp_in_student_space(logits, mapping, len(student))
    full = torch.log_softmax(logits, -1)
    assert moved.shape == (2, 3, len(student))
    torch.testing.assert_close(moved[..., 1], full[..., 7])  # student EOS column = teacher EOS
    torch.testing.assert_close(moved[..., 3:7], full[..., 3:7])  # shared words unchanged
    assert float(moved.exp().sum(-1).max()) <= 1.0 + 1e-12  # a sub-distribution: teacher-only tokens drop out


def test_merge_stop_columns_preserves_the_rest_of_the_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    merged = merge_stop_columns(logits, (1, 7))
    p, q = torch.softmax(logits, -1), torch.softmax(merged, -1)
    torch.testing.assert_close(q[..., 1], p[..., 1] + p[..., 7])
    assert torch.all(q[..., 7] == 0)
    keep = [0, 2, 3, 4, 5, 6, 8]
    torch.testing.assert_close(q[..., keep], p[..., keep])
    assert merge_stop_columns(logits, (1,)) is logits
