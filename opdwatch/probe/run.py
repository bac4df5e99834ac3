"""`opdwatch probe` end to end: load the pair, check their vocabularies, build the probe set, score, summarise, judge.

Responses come from the prompt set's golden solutions or from the student's own rollouts (sampled at
temperature 1 from `seed`). The vocabulary check and EOS mapping are the trainer's (data.eos_canon): ordinary
tokens must share ids, a different EOS or special tokens need `eos_map` ("auto" or "student:teacher" pairs),
and without one the probe refuses with one line, as `opdwatch train` does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from opdwatch.errors import OpdwatchError
from opdwatch.probe.api import ProbeSet, make_probe_set, probe_rows, student_scores, teacher_scores
from opdwatch.probe.counterfactual import ChunkSpec, strip_stop
from opdwatch.probe.models import LoadedModel, load_model
from opdwatch.probe.prompts import ProbePrompt, check_prompts
from opdwatch.probe.summary import ProbeSummary, summarize
from opdwatch.probe.verdict import RiskThresholds, RiskVerdict, risk_verdict

RESPONSE_SOURCES = ("golden", "student")
SENTENCE_ENDS = (".", "!", "?", "\n")


@dataclass(frozen=True)
class ProbeSettings:
    responses: str = "golden"  # "golden" solutions or "student" rollouts to build the counterfactuals from
    copies: int = 6  # occurrences of the last chunk in the loop sequence (the response's own, then 5 repeats)
    chunk: str = "sentence"  # line | sentence | window (counterfactual.CHUNKERS)
    window: int = 8  # tokens of a window chunk (and the fallback when a response has no delimiter)
    max_new_tokens: int = 128  # student rollouts: generation budget
    seed: int = 0  # student rollouts: sampling seed
    batch_size: int = 16  # rows per scoring forward
    device: str = "cpu"  # torch device of the models loaded by name
    dtype: str = "float32"  # their dtype (bfloat16 for real pairs on GPU)
    eos_map: str = ""  # "" (tokenizers must agree), "auto", or "student:teacher" pairs
    cache_dir: str | None = None  # demo model cache


@dataclass
class ProbeReport:
    student: str
    teacher: str
    reference: str | None
    settings: ProbeSettings
    summary: ProbeSummary
    verdict: RiskVerdict
    seconds: dict[str, float] = field(default_factory=dict)  # load, rollouts, scoring, total
    eos_mapping: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"student": self.student, "teacher": self.teacher, "reference": self.reference,
                "settings": asdict(self.settings), "risk": self.verdict.risk, "reasons": self.verdict.reasons,
                "metrics": self.summary.metrics, "per_copy": self.summary.per_copy, "eos": self.summary.eos,
                "rows": self.summary.rows, "seconds": self.seconds, "eos_mapping": self.eos_mapping}


def delimiter_ids(tokenizer: Any, mode: str) -> frozenset[int]:  # noqa: ANN401
    """Token ids that end a line (mode "line") or a sentence: decoded text ending in one of SENTENCE_ENDS."""
    ends = ("\n",) if mode == "line" else SENTENCE_ENDS
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, t in enumerate(texts) if t.rstrip(" ").endswith(ends) or (mode == "line" and "\n" in t))


def _rollouts(student: LoadedModel, prompt_ids: list[list[int]], stop_ids: tuple[int, ...],
              settings: ProbeSettings) -> list[list[int]]:
    import torch

    from opdwatch.trainer.rollout.engine import SamplingParams
    from opdwatch.trainer.rollout.hf_engine import HFEngine

    tok = student.tokenizer
    generator = torch.Generator(device=str(next(student.model.parameters()).device)).manual_seed(settings.seed)
    engine = HFEngine(student.model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=generator,
                      stop_ids=stop_ids)
    out = []
    for start in range(0, len(prompt_ids), settings.batch_size):
        batch = engine.generate(prompt_ids[start : start + settings.batch_size],
                                SamplingParams(1.0, 1.0, settings.max_new_tokens))
        out += [list(strip_stop(r, stop_ids)) for r in batch.token_lists()]
    return out


def build_probe_set(student: LoadedModel, mapping: Any, prompts: list[ProbePrompt],  # noqa: ANN401
                    settings: ProbeSettings) -> ProbeSet:
    from opdwatch.trainer.data.task import prompt_ids as encode_prompt

    tok = student.tokenizer
    ids = [encode_prompt(tok, p.prompt) for p in prompts]
    if settings.responses == "golden":
        missing = sum(p.solution is None for p in prompts)
        if missing:
            raise OpdwatchError(f"--responses golden: {missing} of {len(prompts)} prompts have no solution "
                                "(or use --responses student)")
        responses = [list(tok(p.solution, add_special_tokens=False)["input_ids"]) for p in prompts]
    else:
        responses = _rollouts(student, ids, tuple(mapping.student_stop_ids), settings)
    spec = ChunkSpec(mode=settings.chunk, window=settings.window,
                     delimiters=delimiter_ids(tok, settings.chunk) if settings.chunk != "window" else frozenset())
    probe_set = make_probe_set(ids, responses, eos_id=tok.eos_token_id, spec=spec, copies=settings.copies,
                               mapping=mapping)
    if not probe_set.counterfactuals:
        raise OpdwatchError("every response is empty: nothing to build a loop from")
    return probe_set


def run_probe(student: str | tuple[Any, Any], teacher: str | tuple[Any, Any], prompts: list[ProbePrompt], *,
              reference: str | tuple[Any, Any] | None = None, settings: ProbeSettings | None = None,
              thresholds: RiskThresholds | None = None, progress: bool = True) -> ProbeReport:
    """Probe a (student, teacher) pair: names/paths or in-memory (model, tokenizer) pairs."""
    from tqdm.auto import tqdm

    from opdwatch.trainer.data.eos_canon import resolve_mapping

    settings = settings or ProbeSettings()
    if settings.responses not in RESPONSE_SOURCES:
        raise OpdwatchError(f"responses {settings.responses!r}: one of {', '.join(RESPONSE_SOURCES)}")
    prompts = check_prompts(list(prompts), "given")
    t0 = time.perf_counter()
    kw = {"device": settings.device, "dtype": settings.dtype, "cache_dir": settings.cache_dir}
    s, t = load_model(student, **kw), load_model(teacher, **kw)
    mapping = resolve_mapping(s.tokenizer, t.tokenizer, settings.eos_map)  # refuses mismatched vocabularies
    ref = load_model(reference, **kw) if reference is not None else None
    if ref is not None:
        resolve_mapping(s.tokenizer, ref.tokenizer, "")  # the reference scores student ids as they are
    t1 = time.perf_counter()
    probe_set = build_probe_set(s, mapping, prompts, settings)
    t2 = time.perf_counter()
    n = len(probe_set.counterfactuals)
    with tqdm(total=n * (3 if ref else 2), desc="probe: scoring", disable=not progress, leave=False) as bar:
        t_scores = teacher_scores(t.model, probe_set, batch_size=settings.batch_size, progress=bar)
        s_scores = student_scores(s.model, probe_set, batch_size=settings.batch_size, progress=bar)
        r_scores = (student_scores(ref.model, probe_set, batch_size=settings.batch_size, progress=bar)
                    if ref else None)
    t3 = time.perf_counter()
    summary = summarize(probe_rows(probe_set, t_scores, s_scores, r_scores))
    return ProbeReport(
        s.name, t.name, ref.name if ref else None, settings, summary, risk_verdict(summary.metrics, thresholds),
        {"load": t1 - t0, "responses": t2 - t1, "scoring": t3 - t2, "total": t3 - t0},
        None if mapping.is_identity else mapping.to_dict(),
    )
