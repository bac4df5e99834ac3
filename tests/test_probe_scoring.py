"""Probe scores against a brute-force float64 recomputation, and the EOS mapping between differing tokenizers.

Tiny random Llamas over the demo's character tokenizer (built here, no hub); a teacher tokenizer whose EOS is
another id (`</s>` at the end of its vocabulary, `<s>` where the student has `<eos>`) stands for a real pair
with different special tokens.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from opdwatch.errors import OpdwatchError
from opdwatch.probe.api import make_probe_set, probe_metrics, probe_summary, student_scores, teacher_scores
from opdwatch.probe.counterfactual import ChunkSpec, eos_sequence
from opdwatch.probe.prompts import ProbePrompt
from opdwatch.probe.run import ProbeSettings, delimiter_ids, run_probe
from opdwatch.probe.summary import LOOP_INCENTIVE
from opdwatch.trainer.data.eos_canon import resolve_mapping
from opdwatch.trainer.recipes.demo.tiny_llama import tiny_llama
from opdwatch.trainer.recipes.demo.tokenizer import DEMO_CHARS, build_char_tokenizer

PROMPTS = [ProbePrompt("Q:1+2=?", "1+2=3. \\boxed{3}"), ProbePrompt("Q:4-1+2=?", "4-1=3. 3+2=5. \\boxed{5}"),
           ProbePrompt("Q:7=?", "7")]


def tiny_model(vocab: int, seed: int, eos_id: int = 1):  # noqa: ANN201
    return tiny_llama(vocab_size=vocab, hidden=16, layers=1, heads=2, intermediate=32, max_len=128, pad_id=0,
                      eos_id=eos_id, seed=seed).eval()


def other_eos_tokenizer() -> PreTrainedTokenizerFast:
    """The demo characters at the same ids, but id 1 is `<s>` and the EOS `</s>` is the last id."""
    chars = list(dict.fromkeys(DEMO_CHARS))
    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(chars)}}
    vocab["</s>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<s>"]})
    return tok


def brute_logp(model, ids: list[int], targets_from: int) -> np.ndarray:  # noqa: ANN001
    """float64, one unpadded sequence: log-prob of ids[t] for t >= targets_from, by explicit log-sum-exp."""
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        logits = m64(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    out = []
    for t in range(targets_from, len(ids)):
        row = logits[t - 1]
        out.append(row[ids[t]] - (row.max() + np.log(np.exp(row - row.max()).sum())))
    return np.array(out)


def _probe_set(tok, mapping=None, copies: int = 3):  # noqa: ANN001, ANN202
    ids = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    resp = [tok(p.solution, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    spec = ChunkSpec(mode="sentence", delimiters=delimiter_ids(tok, "sentence"))
    return make_probe_set(ids, resp, eos_id=tok.eos_token_id, spec=spec, copies=copies, mapping=mapping)


def test_scores_equal_a_float64_brute_force() -> None:
    tok = build_char_tokenizer()
    model = tiny_model(len(tok), seed=3)
    ps = _probe_set(tok)
    assert ps.counterfactuals[0].chunk == tuple(tok(" \\boxed{3}", add_special_tokens=False)["input_ids"])
    scores = student_scores(model, ps, batch_size=2)  # batched, right-padded, float32
    for cf, (logp_T, eos_J) in zip(ps.counterfactuals, scores, strict=True):
        P = len(cf.prompt_ids)
        np.testing.assert_allclose(logp_T, brute_logp(model, [*cf.prompt_ids, *cf.tokens], P), atol=2e-5)
        for j in range(cf.copies):  # (b) and (c), each scored as its own explicit sequence
            seq = [*cf.prompt_ids, *eos_sequence(cf, j, tok.eos_token_id)]
            assert eos_J[j] == pytest.approx(brute_logp(model, seq, len(seq) - 1)[0], abs=2e-5)


def test_eos_mapping_is_used_when_vocabularies_differ() -> None:
    s_tok, t_tok = build_char_tokenizer(), other_eos_tokenizer()
    assert t_tok.eos_token_id == len(s_tok) and t_tok.convert_ids_to_tokens(1) == "<s>"
    with pytest.raises(OpdwatchError, match="not compatible: EOS differs"):
        resolve_mapping(s_tok, t_tok, "")
    mapping = resolve_mapping(s_tok, t_tok, "auto")
    teacher = tiny_model(len(t_tok), seed=4, eos_id=t_tok.eos_token_id)
    ps = _probe_set(s_tok, mapping)
    assert ps.teacher_stop_ids == (t_tok.eos_token_id,)
    t_scores = teacher_scores(teacher, ps)
    for cf, (logp_T, eos_J) in zip(ps.counterfactuals, t_scores, strict=True):
        P = len(cf.prompt_ids)
        np.testing.assert_allclose(logp_T, brute_logp(teacher, [*cf.prompt_ids, *cf.tokens], P), atol=2e-5)
        seq = [*cf.prompt_ids, *eos_sequence(cf, 1, t_tok.eos_token_id)]  # the teacher's own EOS id
        assert eos_J[1] == pytest.approx(brute_logp(teacher, seq, len(seq) - 1)[0], abs=2e-5)
        wrong = [*cf.prompt_ids, *eos_sequence(cf, 1, s_tok.eos_token_id)]  # the student's id: the teacher's <s>
        assert abs(eos_J[1] - brute_logp(teacher, wrong, len(wrong) - 1)[0]) > 1e-3


def test_run_probe_in_memory_pair_and_refusals() -> None:
    s_tok, t_tok = build_char_tokenizer(), other_eos_tokenizer()
    student, teacher = tiny_model(len(s_tok), seed=1), tiny_model(len(t_tok), seed=2, eos_id=t_tok.eos_token_id)
    settings = ProbeSettings(copies=3, eos_map="auto", batch_size=2)
    report = run_probe((student, s_tok), (teacher, t_tok), PROMPTS, settings=settings, progress=False)
    assert report.summary.rows == len(PROMPTS) and report.verdict.risk in ("low", "medium", "high")
    assert report.eos_mapping["teacher_eos_id"] == t_tok.eos_token_id
    assert report.to_dict()["metrics"][LOOP_INCENTIVE] == pytest.approx(report.summary.metrics[LOOP_INCENTIVE])
    # the in-memory API gives the same numbers
    ps = _probe_set(s_tok, resolve_mapping(s_tok, t_tok, "auto"))
    assert probe_metrics(student, teacher, ps)[LOOP_INCENTIVE] == pytest.approx(report.summary.metrics[LOOP_INCENTIVE])
    with pytest.raises(OpdwatchError, match="not compatible"):
        run_probe((student, s_tok), (teacher, t_tok), PROMPTS, settings=ProbeSettings(copies=3), progress=False)
    with pytest.raises(OpdwatchError, match="empty"):
        run_probe((student, s_tok), (student, s_tok), [], progress=False)
    # student rollouts instead of golden solutions, and the summary keeps the model's train mode
    student.train()
    sampled = run_probe((student, s_tok), (student, s_tok), PROMPTS[:2], progress=False,
                        settings=ProbeSettings(responses="student", copies=2, max_new_tokens=12, chunk="window"))
    assert student.training and sampled.summary.rows <= 2
    assert probe_summary(student, student, _probe_set(s_tok)).rows == len(PROMPTS)
