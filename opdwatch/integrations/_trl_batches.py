"""TRL micro-batches as opdwatch rollouts: unpadded prompt and response ids, both models' log-probs, loss mask.

The method wrappers (opdwatch.integrations._trl_hooks) hand over what TRL passed to its own methods (padded
tensors, -100 labels, completion masks); these functions turn one micro-batch into :class:`Rollouts` on the CPU.
torch tensors come in, numpy arrays go out; torch itself is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opdwatch.errors import OpdwatchError
from opdwatch.integrations._logprobs import LogitPost


@dataclass
class Rollouts:
    """One micro-batch's on-policy rollouts, unpadded, on the CPU."""
    prompt_ids: list[np.ndarray]  # each (P_i,) int64: the context the student generated from
    response_ids: list[np.ndarray]  # each (L_i,) int64: the sampled tokens, up to and including EOS
    student_logp: list[np.ndarray]  # each (L_i,) float32: log pi_student(y_t | s_t), the loss's temperature
    teacher_logp: list[np.ndarray]  # each (L_i,) float32: log pi_teacher(y_t | s_t)
    loss_mask: list[np.ndarray]  # each (L_i,) bool: tokens the loss trains on (tool outputs are not)


def _split(values_N: Any, counts: list[int]) -> list[np.ndarray]:
    flat = values_N.detach().float().cpu().numpy()
    return np.split(flat, np.cumsum(counts)[:-1]) if counts else []


def post_of(config: Any, temperature: float) -> LogitPost:
    """The logit post-processing TRL's chunked loss applies for this model config (only the common ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text, name, None) is not None:
            raise OpdwatchError(f"model config sets {name}: opdwatch's TRL hook handles logit_scale and "
                                "final_logit_softcapping only")
    scale = getattr(text, "logit_scale", None)
    return LogitPost(scale=1.0 if scale is None else float(scale),
                     softcap=getattr(text, "final_logit_softcapping", None), temperature=float(temperature))


def labelled_rollouts(input_ids: Any, attention: Any, labels: Any, loss_counts: list[int], student_N: Any,
                      teacher_N: Any) -> Rollouts:
    """A GKD/GOLD micro-batch: (B, T) ids, attention mask and unshifted labels (-100 on the prompt, padding
    and after EOS); ``loss_counts`` (B,) labelled positions per row the loss saw, ``*_N`` their log-probs."""
    input_ids, attention, labels = (t.detach().cpu() for t in (input_ids, attention, labels))
    counts = (labels != -100).sum(1).tolist()
    if counts != loss_counts:
        raise RuntimeError("the loss's labels do not match the on-policy batch's completions")
    prompts, responses = [], []
    for b, n in enumerate(counts):
        is_label = (labels[b] != -100).nonzero()[:, 0]
        first = int(is_label[0]) if n else labels.shape[1]
        prompts.append(input_ids[b, :first][attention[b, :first] == 1].numpy().astype(np.int64))
        responses.append(input_ids[b, is_label].numpy().astype(np.int64))
    return Rollouts(prompts, responses, _split(student_N, counts), _split(teacher_N, counts),
                    [np.ones(n, dtype=bool) for n in counts])


def distillation_rollouts(context: dict[str, Any]) -> Rollouts:
    """A DistillationTrainer micro-batch: its ``inputs`` (padded prompt and completion ids and masks) and
    the log-probs the hidden-state hook gathered for the ``student`` and the ``teacher``."""
    inputs, logp = context["inputs"], context["logp"]
    if set(logp) != {"student", "teacher"}:
        raise RuntimeError(f"saw hidden states of {sorted(logp)} only, expected student and teacher")
    prompt_BP, prompt_mask = inputs["prompt_ids"].cpu(), inputs["prompt_mask"].cpu().bool()
    completion_BK, completion_mask = inputs["completion_ids"].cpu(), inputs["completion_mask"].cpu().bool()
    tool_BK = inputs["tool_mask"].cpu().bool() if "tool_mask" in inputs else completion_mask
    counts = completion_mask.sum(1).tolist()
    return Rollouts([prompt_BP[b][prompt_mask[b]].numpy().astype(np.int64) for b in range(len(counts))],
                    [completion_BK[b][completion_mask[b]].numpy().astype(np.int64) for b in range(len(counts))],
                    _split(logp["student"], counts), _split(logp["teacher"], counts),
                    [tool_BK[b][completion_mask[b]].numpy() for b in range(len(counts))])
