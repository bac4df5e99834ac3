"""Counterfactual continuations of a response, built on token ids (no torch, no tokenizer).

From one (prompt, response) pair, where the response is a student rollout or a golden solution without its EOS:

  (a) the loop: the response followed by its last chunk repeated, so the chunk occurs `copies` times in all;
  (b) EOS at the natural end: response + EOS;
  (c) EOS after j repeated copies (j = 1 .. copies - 1): response + chunk * j + EOS.

The chunk is the response's last line, last sentence (delimited by given token ids) or last k tokens. Every token of
the loop sequence carries its copy index: 0 for the regular tokens before the last chunk, 1 for the chunk where the
response has it, 2.. for the repeated copies. Because a causal LM's prediction at a position depends only on the
prefix, one forward pass over the loop sequence gives the log-prob of EOS at every copy boundary too:
`boundaries[j]` is the number of response tokens after which (c) puts its EOS (j = 0 is (b)). `eos_sequence`
builds (b) and (c) explicitly, for brute-force checks and for callers that score them one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from opdwatch.errors import OpdwatchError

REGULAR = 0  # copy index of the tokens before the response's last chunk
ORIGINAL = 1  # copy index of the last chunk where the response itself has it


@dataclass(frozen=True)
class ChunkSpec:
    mode: str = "sentence"  # "line" | "sentence" (chunk ends after a delimiter id) | "window" (last k tokens)
    window: int = 8  # window mode: chunk length in tokens; other modes: fallback when no delimiter is found
    delimiters: frozenset[int] = frozenset()  # token ids that end a line or sentence (from the tokenizer)
    max_tokens: int = 64  # longest chunk kept (a very long last sentence is cut to its last max_tokens)


@dataclass(frozen=True)
class Counterfactual:
    prompt_ids: tuple[int, ...]  # as given
    tokens: tuple[int, ...]  # response + (copies - 1) repeated chunks: the loop sequence (a), no EOS
    copy_index: tuple[int, ...]  # per token of `tokens`: REGULAR, ORIGINAL, then 2, 3, ... for repeated copies
    boundaries: tuple[int, ...]  # boundaries[j]: length of the prefix of `tokens` that (c) ends with EOS (j=0: (b))
    chunk: tuple[int, ...]  # the repeated chunk

    @property
    def copies(self) -> int:
        return len(self.boundaries)


def _delimited_chunk(response: Sequence[int], spec: ChunkSpec) -> tuple[int, ...]:
    """The last segment: tokens after the second-to-last delimiter, through the last token. A response that ends
    with a delimiter gives its last full sentence; one that does not (`... \\boxed{12}`) gives its unfinished tail."""
    ends = [i for i, t in enumerate(response[:-1]) if t in spec.delimiters]  # a delimiter that is not the last token
    start = ends[-1] + 1 if ends else max(0, len(response) - spec.window)
    return tuple(response[start:])


def _window_chunk(response: Sequence[int], spec: ChunkSpec) -> tuple[int, ...]:
    return tuple(response[-spec.window:])


# How each chunk mode finds the last chunk (line and sentence differ only in their delimiter ids)
CHUNKERS: dict[str, Callable[[Sequence[int], ChunkSpec], tuple[int, ...]]] = {
    "line": _delimited_chunk,
    "sentence": _delimited_chunk,
    "window": _window_chunk,
}


def last_chunk(response: Sequence[int], spec: ChunkSpec) -> tuple[int, ...]:
    """The chunk of `response` that the loop repeats (never empty for a non-empty response)."""
    if spec.mode not in CHUNKERS:
        raise OpdwatchError(f"chunk mode {spec.mode!r}: one of {', '.join(sorted(CHUNKERS))}")
    if spec.window < 1 or spec.max_tokens < 1:
        raise OpdwatchError("chunk window and max_tokens must be >= 1")
    if not response:
        raise OpdwatchError("cannot build a loop from an empty response")
    chunk = CHUNKERS[spec.mode](response, spec)
    return chunk[-spec.max_tokens:]


def build_counterfactual(prompt_ids: Sequence[int], response: Sequence[int], spec: ChunkSpec,
                         copies: int) -> Counterfactual:
    """The loop sequence (a) with its copy indices and EOS boundaries for (b) and (c); `copies` >= 2 counts the
    chunk's occurrences, the response's own included."""
    if copies < 2:
        raise OpdwatchError(f"copies={copies}: must be >= 2 (the response's own chunk and at least one repeat)")
    response = tuple(int(t) for t in response)
    chunk = last_chunk(response, spec)
    n_regular = len(response) - len(chunk)
    tokens = response + chunk * (copies - 1)
    index = [REGULAR] * n_regular + [ORIGINAL] * len(chunk)
    for k in range(2, copies + 1):
        index += [k] * len(chunk)
    boundaries = tuple(len(response) + j * len(chunk) for j in range(copies))
    return Counterfactual(tuple(int(t) for t in prompt_ids), tokens, tuple(index), boundaries, chunk)


def eos_sequence(cf: Counterfactual, repeats: int, eos_id: int) -> tuple[int, ...]:
    """(b) for repeats = 0, else (c): the response, `repeats` repeated chunks, then EOS."""
    if not 0 <= repeats < cf.copies:
        raise OpdwatchError(f"repeats={repeats}: must be in [0, {cf.copies - 1}]")
    return cf.tokens[: cf.boundaries[repeats]] + (int(eos_id),)


def middle_prefix(response: Sequence[int], delimiters: Collection[int]) -> tuple[int, ...]:
    """The response cut after the sentence (or line) end nearest its middle: a mid-solution point to loop from.

    Why: the end-of-response probe repeats the final chunk (` \\boxed{12}` in the demo task), but students that
    collapse loop inside the solution (docs/probe.md, measured); a loop of a mid-solution sentence is closer to what
    they do. Without a delimiter before the last token the cut is at half the length (at least one token)."""
    response = tuple(int(t) for t in response)
    if not response:
        raise OpdwatchError("cannot cut an empty response")
    ends = [i for i, t in enumerate(response[:-1]) if t in delimiters]
    if not ends:
        return response[: max(1, len(response) // 2)]
    middle = (len(response) - 1) / 2
    cut = min(ends, key=lambda i: (abs(i - middle), i))  # ties go to the earlier end
    return response[: cut + 1]


def strip_stop(response: Sequence[int], stop_ids: Collection[int]) -> tuple[int, ...]:
    """A rollout's tokens up to (not including) its first stop id: the response the counterfactuals extend."""
    out = []
    for t in response:
        if int(t) in stop_ids:
            break
        out.append(int(t))
    return tuple(out)
