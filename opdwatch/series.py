"""Per-step series of a run: the paper's Figs 2, 3, 4 and 7, one row per step (polars in, polars out).

    frame = step_series(open_run("runs/exp1"))
    frame.select("step", "rollout/truncation_rate", "val/rollout/accuracy", "token/adv_repetitive_mean")

Where each column comes from:

- ``token/*`` (Figs 3/4: log-probs, advantages of repetitive vs regular tokens, repetitive share, EOS
  advantage) are aggregated from the train token Parquet files with one streaming polars query, so a
  50M-row run never sits in memory. When the recorder thinned token rows (manifest ``recorder``:
  ``token_every_k_steps > 1`` or ``token_rollout_fraction < 1``) or a step's token rows are incomplete,
  that step takes the recorder's exact step metrics instead; ``token_source`` says which was used.
- ``rollout/*`` (Fig 2: truncation, repetition, length, accuracy) from the rollout table, which is
  never thinned; steps without rollout rows keep the step metrics.
- ``val/*``: the same for validation (``val/rollout/*`` from val rollouts, other ``val/`` columns from
  the val metric rows).
- Everything else the trainer logged (``loss/*``, ``control/*``, ``time/*``, ``optim/*``) from the
  step metrics, unchanged.

Definitions match :mod:`opdwatch.aggregates` exactly (means over loss-masked tokens ignoring NaN; the
EOS advantage is not loss-masked; a repetitive token is ``rep_tail | rep_ngram``), so a run recorded
with full token rows gives the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from opdwatch.format import ROLLOUT_SCHEMA, TOKEN_SCHEMA
from opdwatch.reader import Part, Run, scan_files

# Columns computed here from the token table (train phase), in display order.
TOKEN_SERIES = (
    "token/count",
    "token/student_logp_mean",
    "token/teacher_logp_mean",
    "token/ref_logp_mean",
    "token/advantage_mean",
    "token/adv_repetitive_mean",
    "token/adv_regular_mean",
    "token/adv_tail_mean",
    "token/repetitive_share",
    "token/ngram_repeat_share",
    "token/tail_share",
    "token/eos_advantage_mean",
)
# Columns computed here from the rollout table (both phases).
ROLLOUT_SERIES = (
    "rollout/count",
    "rollout/truncation_rate",
    "rollout/repetition_rate",
    "rollout/loop_rate",
    "rollout/mean_length",
    "rollout/max_length",
    "rollout/length_cv",
    "rollout/zlib_tail_ratio_mean",
    "rollout/accuracy",
)
TOKEN_SOURCE = "token_source"  # per step: "tokens" | "step_metrics" | "tokens_partial" | null
_TOKEN_COLUMNS = ("step", "loss_mask", "student_logp", "teacher_logp", "ref_logp", "advantage", "eos",
                  "rep_tail", "rep_ngram")
_TOKEN_PL_SCHEMA = pl.Schema(pl.from_arrow(TOKEN_SCHEMA.empty_table()).schema)
_ROLLOUT_PL_SCHEMA = pl.Schema(pl.from_arrow(ROLLOUT_SCHEMA.empty_table()).schema)
# Token files are aggregated in about this many batches so a progress bar can move; each batch is one
# streaming query and batches never split a step, so per-step sums need no merging.
_PROGRESS_BATCHES = 16

Progress = Callable[[int, int], None]  # (token rows done, token rows total)


def step_series(run: Run, *, progress: Progress | None = None) -> pl.DataFrame:
    """One row per step (train steps, plus any step with only validation) with the Fig 2/3/4/7 series.

    Train metrics keep their recorder keys, validation metrics are prefixed ``val/``; nulls where a step
    has no value. ``progress(done, total)`` is called as token rows are aggregated.
    """
    metrics = run.steps().collect()
    train = _metric_rows(metrics, "train", prefix="")
    val = _metric_rows(metrics, "val", prefix="val/")
    roll_train = rollout_aggregates(run, phase="train")
    roll_val = rollout_aggregates(run, phase="val").drop("rollout/tokens").rename(
        {c: f"val/{c}" for c in ROLLOUT_SERIES})
    tokens = token_aggregates(run.parts("tokens"), progress=progress)

    sources = (train, val, roll_train, roll_val, tokens)
    steps = pl.concat([f.select("step") for f in sources]).unique().sort("step")
    # Recomputed columns get a '#r' (rollout table) or '#t' (token table) suffix until merged below.
    roll_train = roll_train.rename({c: f"{c}#r" for c in (*ROLLOUT_SERIES, "rollout/tokens")})
    roll_val = roll_val.rename({f"val/{c}": f"val/{c}#r" for c in ROLLOUT_SERIES})
    tokens = tokens.rename({c: f"{c}#t" for c in (*TOKEN_SERIES, "token_rows")})
    frame = steps
    for part in (train, val, roll_train, roll_val, tokens):
        frame = frame.join(part, on="step", how="left")
    frame = _ensure(frame, [*ROLLOUT_SERIES, *TOKEN_SERIES, *(f"val/{c}" for c in ROLLOUT_SERIES)])

    # Rollout-level: the rollout table wherever the step has rollout rows (it is exact), else metrics.
    frame = frame.with_columns(
        [pl.coalesce(pl.col(f"{c}#r"), pl.col(c)).alias(c) for c in ROLLOUT_SERIES]
        + [pl.coalesce(pl.col(f"val/{c}#r"), pl.col(f"val/{c}")).alias(f"val/{c}") for c in ROLLOUT_SERIES])

    # Token-level: the token table only where it holds every token of the step's train rollouts.
    thinned = tokens_thinned(run.manifest)
    complete = (pl.col("token_rows#t") == pl.col("rollout/tokens#r")) & pl.lit(not thinned)
    has_metrics = pl.col("token/count").is_not_null()
    has_rows = pl.col("token_rows#t").fill_null(0) > 0
    frame = frame.with_columns(
        pl.when(complete).then(pl.lit("tokens"))
        .when(has_metrics).then(pl.lit("step_metrics"))
        .when(has_rows).then(pl.lit("tokens_partial"))
        .otherwise(pl.lit(None, dtype=pl.String)).alias(TOKEN_SOURCE))
    use_tokens = pl.col(TOKEN_SOURCE).is_in(["tokens", "tokens_partial"])
    frame = frame.with_columns(
        [pl.when(use_tokens).then(pl.col(f"{c}#t")).otherwise(pl.col(c)).alias(c) for c in TOKEN_SERIES])

    frame = frame.drop([c for c in frame.columns if "#" in c])
    first = ["step", *ROLLOUT_SERIES, *TOKEN_SERIES, TOKEN_SOURCE]
    rest = sorted(c for c in frame.columns if c not in first)
    return frame.select(first + rest)


def tokens_thinned(manifest: dict[str, Any]) -> bool:
    """Whether the recorder kept only a sample of token rows (then token aggregates are estimates)."""
    rec = manifest.get("recorder") or {}
    every_k = int(rec.get("token_every_k_steps", 1) or 1)
    return every_k > 1 or float(rec.get("token_rollout_fraction", 1.0)) < 1.0


def token_source_note(frame: pl.DataFrame) -> str:
    """One sentence saying where the token-level series came from (for reports and the CLI)."""
    if TOKEN_SOURCE not in frame.columns or frame.height == 0:
        return "no token-level series"
    counts = dict(frame.group_by(TOKEN_SOURCE).len().iter_rows())
    parts = []
    labels = {"tokens": "aggregated from token rows", "step_metrics": "recorder step metrics (token rows "
              "thinned or missing)", "tokens_partial": "partial token rows (estimate)", None: "no token data"}
    for key in ("tokens", "step_metrics", "tokens_partial", None):
        if counts.get(key):
            parts.append(f"{counts[key]} steps {labels[key]}")
    return "token series: " + "; ".join(parts)


def token_aggregates(parts: list[Part], *, progress: Progress | None = None) -> pl.DataFrame:
    """Per-step token aggregates of the train token files ``parts`` (streaming; never loads the table).

    Returns ``step``, :data:`TOKEN_SERIES` and ``token_rows`` (rows seen, to check completeness). Token
    files are partitioned by step, so each step is one aggregation over its own files (no group-by: on
    50M rows a streaming ``group_by("step")`` with a dozen conditional means was 2.5x slower); the steps
    of a batch are concatenated into one lazy query that polars runs in parallel.
    """
    by_step: dict[int, list[Part]] = {}
    for part in parts:
        if part.phase == "train":
            by_step.setdefault(part.step, []).append(part)
    total = sum(p.num_rows for files in by_step.values() for p in files)
    schema = {"step": pl.Int64, **{c: pl.Float64 for c in TOKEN_SERIES}, "token_rows": pl.UInt32}
    if not by_step:
        return pl.DataFrame(schema=schema)
    out, done = [], 0
    for batch in _batches(sorted(by_step.items()), total):
        queries = [token_query(scan_files([p.path for p in files], _TOKEN_PL_SCHEMA))
                   .with_columns(pl.lit(step, dtype=pl.Int64).alias("step")) for step, files in batch]
        out.append(pl.concat(queries).collect(engine="streaming"))
        done += sum(p.num_rows for _, files in batch for p in files)
        if progress is not None:
            progress(done, total)
    frame = pl.concat(out).sort("step")
    return frame.select(pl.col(c).cast(dtype) for c, dtype in schema.items())


def token_query(tokens: pl.LazyFrame) -> pl.LazyFrame:
    """The token aggregates of all rows of ``tokens`` (one step's token-table scan) as a one-row lazy query."""
    mask = pl.col("loss_mask")
    rep = pl.col("rep_tail") | pl.col("rep_ngram")

    def val(name: str) -> pl.Expr:  # float64 sums like the recorder; NaN means "not computed"
        return pl.col(name).cast(pl.Float64).fill_nan(None)

    def mean_where(expr: pl.Expr, cond: pl.Expr) -> pl.Expr:
        return pl.when(cond).then(expr).mean()

    adv = val("advantage")
    return tokens.select(_TOKEN_COLUMNS).select(
        mask.sum().cast(pl.Float64).alias("token/count"),
        mean_where(val("student_logp"), mask).alias("token/student_logp_mean"),
        mean_where(val("teacher_logp"), mask).alias("token/teacher_logp_mean"),
        mean_where(val("ref_logp"), mask).alias("token/ref_logp_mean"),
        mean_where(adv, mask).alias("token/advantage_mean"),
        mean_where(adv, mask & rep).alias("token/adv_repetitive_mean"),
        mean_where(adv, mask & ~rep).alias("token/adv_regular_mean"),
        mean_where(adv, mask & pl.col("rep_tail")).alias("token/adv_tail_mean"),
        mean_where(rep.cast(pl.Float64), mask).alias("token/repetitive_share"),
        mean_where(pl.col("rep_ngram").cast(pl.Float64), mask).alias("token/ngram_repeat_share"),
        mean_where(pl.col("rep_tail").cast(pl.Float64), mask).alias("token/tail_share"),
        mean_where(adv, pl.col("eos")).alias("token/eos_advantage_mean"),
        pl.len().alias("token_rows"),
    )


def rollout_aggregates(run: Run, *, phase: str = "train") -> pl.DataFrame:
    """Per-step rollout aggregates of one phase: :data:`ROLLOUT_SERIES` plus ``rollout/tokens`` (the
    response tokens of the step's rollouts, to check token-table completeness)."""
    cols = ["step", "num_tokens", "truncated", "repetitive", "loop_onset", "zlib_tail_ratio", "correct"]
    if not any(p.phase == phase for p in run.parts("rollouts")):
        return pl.DataFrame(schema={"step": pl.Int64, **{c: pl.Float64 for c in ROLLOUT_SERIES},
                                    "rollout/tokens": pl.Float64})
    rollouts = _scan_rollouts(run, phase)
    n = pl.col("num_tokens").cast(pl.Float64)
    return rollouts.select(cols).group_by("step").agg(
        pl.len().cast(pl.Float64).alias("rollout/count"),
        pl.col("truncated").cast(pl.Float64).mean().alias("rollout/truncation_rate"),
        pl.col("repetitive").cast(pl.Float64).mean().alias("rollout/repetition_rate"),
        pl.col("loop_onset").is_not_null().cast(pl.Float64).mean().alias("rollout/loop_rate"),
        n.mean().alias("rollout/mean_length"),
        n.max().alias("rollout/max_length"),
        (n.std(ddof=0) / n.mean()).alias("rollout/length_cv"),
        pl.col("zlib_tail_ratio").fill_nan(None).mean().alias("rollout/zlib_tail_ratio_mean"),
        pl.col("correct").cast(pl.Float64).mean().alias("rollout/accuracy"),
        n.sum().alias("rollout/tokens"),
    ).collect(engine="streaming").sort("step")


def length_distribution(run: Run, *, phase: str = "train") -> pl.DataFrame:
    """Response lengths per rollout: ``step``, ``num_tokens``, ``truncated``, ``repetitive`` (one row per
    rollout of ``phase``), the input of :func:`opdwatch.plots.fig_length_distribution`."""
    return (_scan_rollouts(run, phase).select("step", "num_tokens", "truncated", "repetitive")
            .collect().sort("step"))


def length_quantiles(lengths: pl.DataFrame, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> pl.DataFrame:
    """Per-step quantiles of ``num_tokens`` (columns ``q10``, ``q50``, ... and ``max``)."""
    if lengths.height == 0:
        return pl.DataFrame(schema={"step": pl.Int64, **{f"q{round(q * 100)}": pl.Float64 for q in quantiles},
                                    "max": pl.Float64})
    n = pl.col("num_tokens").cast(pl.Float64)
    return lengths.group_by("step").agg(
        *[n.quantile(q, interpolation="linear").alias(f"q{round(q * 100)}") for q in quantiles],
        n.max().alias("max"),
    ).sort("step")


# ---------------------------------------------------------------------------------------------- helpers
def _scan_rollouts(run: Run, phase: str) -> pl.LazyFrame:
    """The rollout rows of one phase, scanning only that phase's files (the file name is the phase)."""
    files = [p.path for p in run.parts("rollouts") if p.phase == phase]
    if not files:
        return pl.LazyFrame(schema=_ROLLOUT_PL_SCHEMA)
    return scan_files(files, _ROLLOUT_PL_SCHEMA)


def _metric_rows(metrics: pl.DataFrame, phase: str, *, prefix: str) -> pl.DataFrame:
    rows = metrics.filter(pl.col("phase") == phase).drop("phase", "rank")
    # Several ranks may write rows for one step only if a loop misuses log_metrics; keep the last.
    rows = rows.unique("step", keep="last").sort("step")
    rows = rows.with_columns(pl.col(c).fill_nan(None) for c, t in rows.schema.items() if t == pl.Float64)
    if prefix:
        rows = rows.rename({c: f"{prefix}{c}" for c in rows.columns if c != "step"})
    return rows


def _ensure(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in missing)


def _batches(steps: list[tuple[int, list[Part]]], total: int) -> list[list[tuple[int, list[Part]]]]:
    """Split the step-sorted (step, files) pairs into about :data:`_PROGRESS_BATCHES` batches by rows."""
    target = max(1, total // _PROGRESS_BATCHES)
    out: list[list[tuple[int, list[Part]]]] = [[]]
    rows = 0
    for item in steps:
        if rows >= target:
            out.append([])
            rows = 0
        out[-1].append(item)
        rows += sum(p.num_rows for p in item[1])
    return out
