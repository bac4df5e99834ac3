"""EOS canonicalisation between student and teacher tokenizers: one stop event for sampling, scoring and KL.

A reader of the Stable-OPD paper saw non-termination and repetition when student and teacher had different EOS
ids: the teacher scored the student's EOS as some other token (say its BOS), so stopping got a large negative
advantage. We check the two vocabularies at start-up and build a `TokenMapping`:

- regular (non-special) tokens must have the same id for the same string in both tokenizers, otherwise scoring
  student token ids with the teacher is meaningless and we refuse (no id mapping can repair a different BPE);
- special tokens (EOS, chat-template markers) may differ; then a mapping must be given (`"auto"`, or explicit
  `"student:teacher"` pairs), or we refuse with one line that says what differs and how to set it.

With a mapping, every student stop id (its EOS, plus its id of the teacher's EOS string if it has one) ends a
rollout, and `to_teacher_ids` rewrites each of them to the teacher's EOS before teacher scoring, so a student EOS
is scored by the teacher as its own EOS. For full-distribution objectives, `teacher_logp_in_student_space` moves
the teacher's columns into student ids and `merge_stop_columns` folds several student stop ids into one event.
The mapping goes into the run manifest (`TokenMapping.to_dict()` under tokenizer_info["eos_mapping"]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.data.special_tokens import special_token_ids


@dataclass(frozen=True)
class VocabCheck:
    """How two tokenizers differ. Ids are (student id, teacher id); None where the string is missing."""

    regular_mismatches: tuple[tuple[str, int, int | None], ...]  # fatal: same ordinary string, other id
    special_mismatches: tuple[tuple[str, int, int | None], ...]  # student special whose teacher id differs
    student_eos: tuple[str, int]  # (string, id)
    teacher_eos: tuple[str, int]

    @property
    def same_stop(self) -> bool:
        return self.student_eos == self.teacher_eos

    @property
    def compatible(self) -> bool:
        """True when teacher scoring can use the student's ids as they are."""
        return not self.regular_mismatches and not self.special_mismatches and self.same_stop


@dataclass(frozen=True)
class TokenMapping:
    """Student-id -> teacher-id rewrites applied before teacher scoring, and the student's stop ids.

    `student_stop_ids[0]` is the canonical stop (the student tokenizer's EOS); every id in `student_stop_ids`
    ends a rollout and is scored by the teacher as `teacher_eos_id`.
    """

    student_to_teacher: tuple[tuple[int, int], ...]
    student_stop_ids: tuple[int, ...]
    teacher_eos_id: int
    unresolved_special_ids: tuple[int, ...] = ()  # student specials with no teacher counterpart (mask them)

    @property
    def is_identity(self) -> bool:
        return all(s == t for s, t in self.student_to_teacher) and len(self.student_stop_ids) == 1

    def to_dict(self) -> dict[str, object]:
        return {"student_to_teacher": {str(s): t for s, t in self.student_to_teacher},
                "student_stop_ids": list(self.student_stop_ids), "teacher_eos_id": self.teacher_eos_id,
                "unresolved_special_ids": list(self.unresolved_special_ids)}


def _vocab(tokenizer) -> dict[str, int]:
    return {str(k): int(v) for k, v in tokenizer.get_vocab().items()}


def check_vocabularies(student_tok, teacher_tok) -> VocabCheck:
    """Compare two transformers tokenizers string by string (every student token is looked up in the teacher)."""
    s_vocab, t_vocab = _vocab(student_tok), _vocab(teacher_tok)
    s_special = set(special_token_ids(student_tok))
    t_special_ids = set(special_token_ids(teacher_tok))
    regular, special = [], []
    for string, s_id in sorted(s_vocab.items(), key=lambda kv: kv[1]):
        t_id = t_vocab.get(string)
        if t_id == s_id:
            continue
        if s_id in s_special or (t_id is not None and t_id in t_special_ids):
            special.append((string, s_id, t_id))
        else:
            regular.append((string, s_id, t_id))
    return VocabCheck(tuple(regular), tuple(special),
                      (str(student_tok.eos_token), int(student_tok.eos_token_id)),
                      (str(teacher_tok.eos_token), int(teacher_tok.eos_token_id)))


def _describe(items: tuple[tuple[str, int, int | None], ...], limit: int = 3) -> str:
    shown = ", ".join(f"{s!r} student {a} / teacher {'missing' if b is None else b}" for s, a, b in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _token_id(side: str, vocab: dict[str, int], value: str) -> int:
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    if value not in vocab:
        raise OpdwatchError(f"eos_map: {side} token {value!r} is not in the {side} vocabulary")
    return vocab[value]


def parse_pairs(spec: str, student_tok, teacher_tok) -> list[tuple[int, int]]:
    """`"1:6, <|im_end|>:</s>"` -> [(1, 6), (s_id, t_id)]; each side an id or a token string."""
    s_vocab, t_vocab = _vocab(student_tok), _vocab(teacher_tok)
    pairs = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        left, sep, right = item.rpartition(":")
        if not sep or not left or not right:
            raise OpdwatchError(f"eos_map item {item!r} must look like student:teacher (ids or token strings)")
        pair = (_token_id("student", s_vocab, left), _token_id("teacher", t_vocab, right))
        if not (0 <= pair[0] < len(student_tok) and 0 <= pair[1] < len(teacher_tok)):
            raise OpdwatchError(f"eos_map pair {pair[0]}:{pair[1]} is outside the vocabularies "
                                f"(student {len(student_tok)}, teacher {len(teacher_tok)})")
        pairs.append(pair)
    return pairs


def resolve_mapping(student_tok, teacher_tok, spec: str = "") -> TokenMapping:
    """Check the vocabularies and build the mapping; raise OpdwatchError (one line) when scoring would be wrong.

    spec: "" = none given (only identical special tokens and EOS are accepted); "auto" = map the student's EOS and
    every student special token to the teacher id of the same string, and the teacher's EOS string to the teacher
    EOS; otherwise explicit "student:teacher" pairs, which must cover the student's EOS.
    """
    check = check_vocabularies(student_tok, teacher_tok)
    if check.regular_mismatches:
        raise OpdwatchError("student and teacher vocabularies differ on ordinary tokens ("
                            + _describe(check.regular_mismatches) + "): teacher scoring needs one shared vocabulary")
    s_eos, t_eos = check.student_eos[1], check.teacher_eos[1]
    spec = spec.strip()
    if not spec:
        if not check.compatible:
            what = (f"EOS differs (student {check.student_eos[0]!r}={s_eos}, teacher {check.teacher_eos[0]!r}={t_eos})"
                    if not check.same_stop else "special tokens differ (" + _describe(check.special_mismatches) + ")")
            raise OpdwatchError(f"student and teacher tokenizers are not compatible: {what}; set the EOS/special "
                                f"mapping (eos_map=auto or eos_map='{s_eos}:{t_eos}')")
        return TokenMapping(((s_eos, t_eos),), (s_eos,), t_eos)

    s_vocab = _vocab(student_tok)
    stops = [s_eos]
    alt_stop = s_vocab.get(check.teacher_eos[0])  # the teacher's EOS string in the student's vocabulary
    if alt_stop is not None and alt_stop != s_eos:
        stops.append(alt_stop)
    if spec == "auto":
        pairs = {s: t for _, s, t in check.special_mismatches if t is not None}
    else:
        pairs = dict(parse_pairs(spec, student_tok, teacher_tok))
        if pairs.get(s_eos, s_eos) != t_eos:
            raise OpdwatchError(f"eos_map={spec!r} does not map the student EOS {s_eos} to the teacher EOS "
                                f"{t_eos}: add '{s_eos}:{t_eos}'")
    for s in stops:  # one stop event: every student stop id is the teacher's EOS
        pairs[s] = t_eos
    unresolved = tuple(sorted(s for _, s, _t in check.special_mismatches if s not in pairs))
    return TokenMapping(tuple(sorted(pairs.items())), tuple(stops), t_eos, unresolved)


def to_teacher_ids(ids: torch.Tensor, mapping: TokenMapping) -> torch.Tensor:
    """Rewrite student ids into teacher ids (any shape; ids not in the mapping are shared and kept)."""
    out = ids.clone()
    for s, t in mapping.student_to_teacher:
        if s != t:
            out[ids == s] = t
    return out


def teacher_logp_in_student_space(teacher_logits_BTV: torch.Tensor, mapping: TokenMapping,
                                  student_vocab_size: int) -> torch.Tensor:
    """Teacher log-probs (B, T, V_t) -> (B, T, V_s) indexed by student ids.

    Shared ids keep their column; a mapped student id takes its teacher column; the teacher's EOS mass goes to the
    canonical student stop only (extra student stop ids get -inf, so the stop event is counted once); student ids
    with no teacher counterpart (unresolved specials, ids beyond the teacher vocabulary) get -inf. Log-probs are
    under the full teacher distribution, so mass on teacher-only tokens is simply absent.
    """
    logp_BTV = torch.log_softmax(teacher_logits_BTV, dim=-1,
                                 dtype=torch.promote_types(teacher_logits_BTV.dtype, torch.float32))
    V_t = logp_BTV.shape[-1]
    width = min(V_t, student_vocab_size)
    out = logp_BTV.new_full((*logp_BTV.shape[:-1], student_vocab_size), float("-inf"))
    out[..., :width] = logp_BTV[..., :width]
    for s, t in mapping.student_to_teacher:
        out[..., s] = logp_BTV[..., t]
    for s in mapping.student_stop_ids[1:]:
        out[..., s] = float("-inf")
    for s in mapping.unresolved_special_ids:
        out[..., s] = float("-inf")
    return out


def merge_stop_columns(logits_BTV: torch.Tensor, stop_ids: tuple[int, ...]) -> torch.Tensor:
    """Fold several stop ids into one event: column stop_ids[0] = logsumexp of the stop columns, the others -inf.

    The softmax over the result equals the original one on every other token, so it only merges the stop mass.
    """
    if len(stop_ids) <= 1:
        return logits_BTV
    index = torch.as_tensor(stop_ids, device=logits_BTV.device)
    merged_BT = torch.logsumexp(logits_BTV.index_select(-1, index), dim=-1)
    out = logits_BTV.index_fill(-1, index[1:], float("-inf"))
    return out.index_copy(-1, index[:1], merged_BT[..., None])
