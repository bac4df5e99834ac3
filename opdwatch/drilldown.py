"""Drill into single rollouts: the first repetitive ones, and one rollout's tokens with their text.

    first = first_repetitive_rollouts(run, n=3)
    row = first.row(0, named=True)
    tokens = rollout_tokens(run, step=row["step"], rollout=row["rollout"], rank=row["rank"])
    fig_token_view(tokens)
"""

from __future__ import annotations

import polars as pl

from opdwatch.errors import OpdwatchError
from opdwatch.run_files import TABLE_SCHEMAS
from opdwatch.run_source import RunSource
from opdwatch.segments import scan_part_rows

_ROLLOUT_COLUMNS = ("step", "rank", "rollout", "phase", "num_tokens", "finish_reason", "zlib_tail_ratio",
                    "seq_rep_n", "loop_onset", "advantage_mean", "repetitive_token_share", "tokens_recorded", "text")
_TOKENS = TABLE_SCHEMAS["tokens"]  # no pl.from_arrow: it imports pandas
_ROLLOUTS = TABLE_SCHEMAS["rollouts"]


def first_repetitive_rollouts(run: RunSource, *, n: int = 5, phase: str = "train") -> pl.DataFrame:
    """The ``n`` earliest rollouts flagged repetitive (zlib tail rule), earliest step first."""
    files = [p for p in run.parts("rollouts") if p.phase == phase]
    if not files:
        return pl.DataFrame(schema={c: _ROLLOUTS[c] for c in _ROLLOUT_COLUMNS})
    return (scan_part_rows(files, _ROLLOUTS).filter(pl.col("repetitive")).select(_ROLLOUT_COLUMNS)
            .sort("step", "rank", "rollout").head(n).collect())


def rollout_tokens(run: RunSource, *, step: int, rollout: int, rank: int = 0, phase: str = "train") -> pl.DataFrame:
    """One rollout's token rows plus ``text`` (each token's piece of the decoded response, cut at
    ``char_end``; ``<id>`` when the writer gave no offsets). Raises when its token rows were not kept."""
    token_files = [p for p in run.parts("tokens") if p.step == step and p.rank == rank and p.phase == phase]
    rollout_files = [p for p in run.parts("rollouts")
                     if p.step == step and p.rank == rank and p.phase == phase]
    where = f"step {step}, rank {rank}, {phase} rollout {rollout}"
    if not rollout_files:
        raise OpdwatchError(f"{run.path}: no {phase} rollouts recorded at step {step} rank {rank}")
    texts = scan_part_rows(rollout_files, _ROLLOUTS).filter(pl.col("rollout") == rollout).select("text").collect()
    if texts.height == 0:
        raise OpdwatchError(f"{run.path}: no rollout at {where}")
    tokens = pl.DataFrame(schema=_TOKENS)
    if token_files:
        tokens = scan_part_rows(token_files, _TOKENS).filter(pl.col("rollout") == rollout).collect()
    if tokens.height == 0:
        raise OpdwatchError(f"{run.path}: token rows of {where} were not recorded (thinned or no log-probs)")
    return with_token_text(tokens.sort("position"), texts["text"][0] or "")


def with_token_text(tokens: pl.DataFrame, text: str) -> pl.DataFrame:
    """Add ``text``: the piece of ``text`` each token spans (``text[prev_end:char_end]``)."""
    ends = tokens["char_end"].to_list()
    if any(e is None for e in ends):
        pieces = [f"<{t}>" for t in tokens["token_id"].to_list()]
    else:
        starts = [0, *ends[:-1]]
        pieces = [text[a:b] if b > a else "" for a, b in zip(starts, ends, strict=True)]
    return tokens.with_columns(pl.Series("text", pieces, dtype=pl.String))
