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

The ``rollout/*`` and ``token/*`` expressions are generated from :mod:`opdwatch.metric_defs`, the table the
recorder's partials (:mod:`opdwatch.aggregates`) come from too (means over loss-masked tokens ignoring
NaN; the EOS advantage is not loss-masked; a repetitive token is ``rep_tail | rep_ngram``), so a run
recorded with full token rows gives the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from opdwatch import metric_defs
from opdwatch.run_files import TABLE_SCHEMAS, Part
from opdwatch.run_source import RunSource
from opdwatch.segments import ROLLOUT_AGGREGATES, TOKEN_AGGREGATES, precomputed, scan_part_rows
from opdwatch.text import plural

# Columns computed here from the token table (train phase) and the rollout table (both phases), in display
# order: the metric table's keys.
TOKEN_SERIES = tuple(d.key for d in metric_defs.TOKEN_METRICS)
ROLLOUT_SERIES = tuple(d.key for d in metric_defs.ROLLOUT_METRICS)
TOKEN_SOURCE = "token_source"  # per step: "tokens" | "step_metrics" | "tokens_partial" | null
_ROLLOUT_TOKENS = "rollout/tokens"  # not a metric: response tokens per step, to check token-table completeness
_ROLLOUT_ROWS = "rollout_rows"  # rows aggregated (a compacted segment's sidecar is used only for the same rows)
_TOKEN_PL_SCHEMA = TABLE_SCHEMAS["tokens"]  # no pl.from_arrow: it imports pandas
_ROLLOUT_PL_SCHEMA = TABLE_SCHEMAS["rollouts"]
# metric_defs columns a table stores in another form (stored column, expression): a rollout loops when it
# has a loop onset.
_STORED = {"looping": ("loop_onset", pl.col("loop_onset").is_not_null())}
# What the aggregation queries read of each table.
_TOKEN_COLUMNS = ("step", *metric_defs.stored_columns("token"))
_ROLLOUT_COLUMNS = ("step", *(_STORED[c][0] if c in _STORED else c for c in metric_defs.stored_columns("rollout")))
# Token files are aggregated in about this many batches so a progress bar can move; each batch is one
# streaming query and batches never split a step, so per-step sums need no merging.
_PROGRESS_BATCHES = 16

Progress = Callable[[int, int], None]  # (token rows done, token rows total)


def step_series(run: RunSource, *, progress: Progress | None = None) -> pl.DataFrame:
    """One row per step (train steps, plus any step with only validation) with the Fig 2/3/4/7 series.

    Train metrics keep their recorder keys, validation metrics are prefixed ``val/``; nulls where a step
    has no value. ``progress(done, total)`` is called as token rows are aggregated.
    """
    metrics = run.steps().collect()
    train = _metric_rows(metrics, "train", prefix="")
    val = _metric_rows(metrics, "val", prefix=metric_defs.VAL_PREFIX)
    roll_train = rollout_aggregates(run, phase="train")
    roll_val = rollout_aggregates(run, phase="val").drop(_ROLLOUT_TOKENS).rename(
        {c: f"val/{c}" for c in ROLLOUT_SERIES})
    tokens = token_aggregates(run.parts("tokens"), progress=progress)

    sources = (train, val, roll_train, roll_val, tokens)
    steps = pl.concat([f.select("step") for f in sources]).unique().sort("step")
    # Recomputed columns get a '#r' (rollout table) or '#t' (token table) suffix until merged below.
    roll_train = roll_train.rename({c: f"{c}#r" for c in (*ROLLOUT_SERIES, _ROLLOUT_TOKENS)})
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
    complete = (pl.col("token_rows#t") == pl.col(f"{_ROLLOUT_TOKENS}#r")) & pl.lit(not thinned)
    has_metrics = pl.col(metric_defs.TOKEN_COUNT).is_not_null()
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
            parts.append(f"{plural(counts[key], 'step')} {labels[key]}")
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
    schema = {"step": pl.Int64, **{c: pl.Float64 for c in TOKEN_SERIES}, "token_rows": pl.UInt32}
    if not by_step:
        return pl.DataFrame(schema=schema)
    out, done = [], 0
    # compacted steps: their segment's sidecar holds these very aggregates, computed from the files it replaced
    stored, served = precomputed(by_step, TOKEN_AGGREGATES, "token_rows")
    if stored is not None:
        out.append(stored.select(pl.col(c).cast(dtype) for c, dtype in schema.items()))
        by_step = {s: files for s, files in by_step.items() if s not in served}
    total = sum(p.num_rows for files in by_step.values() for p in files)
    for batch in _batches(sorted(by_step.items()), total) if by_step else []:
        queries = [token_query(scan_part_rows(files, _TOKEN_PL_SCHEMA))
                   .with_columns(pl.lit(step, dtype=pl.Int64).alias("step")) for step, files in batch]
        out.append(pl.concat(queries).collect(engine="streaming"))
        done += sum(p.num_rows for _, files in batch for p in files)
        if progress is not None:
            progress(done, total)
    frame = pl.concat([f.select(pl.col(c).cast(dtype) for c, dtype in schema.items()) for f in out]).sort("step")
    return frame


def token_query(tokens: pl.LazyFrame) -> pl.LazyFrame:
    """The token aggregates of all rows of ``tokens`` (one step's token-table scan) as a one-row lazy query."""
    if not _TOKEN_EXPRS:  # built once: on a 2,000-step run, building them per step cost more than the query
        _TOKEN_EXPRS.extend([*(metric_expr(d, _TOKEN_PL_SCHEMA) for d in metric_defs.TOKEN_METRICS),
                             pl.len().alias("token_rows")])
    return tokens.select(_TOKEN_COLUMNS).select(*_TOKEN_EXPRS)


_TOKEN_EXPRS: list[pl.Expr] = []


def metric_expr(d: metric_defs.MetricDef, schema: pl.Schema, *, ordered: bool = False) -> pl.Expr:
    """The aggregation of metric ``d`` over the rows in context (a whole frame or a group), named ``d.key``:
    the polars form of the recorder's partials + finalize (float64; NaN, inf and null values ignored).

    ``ordered``: sum each group's values sorted, one after another, so the result does not depend on how
    polars splits the rows. Why: a polars group-by mean over the same 8 rows gave 0.8635416666666668 or
    ...667 from one read to the next (35-43 of 1,000 reads under CPU load, either engine, even with the
    values sorted first), so two reads of one run differed. Sorted + sequential gave 0 of 1,000. It costs a
    sort per group: meant for the rollout table (one row per rollout), not for token rows."""
    cond = None if d.mask is None else d.mask.where(_column)
    if d.reduction == "count":
        return (pl.len() if cond is None else cond.sum()).cast(pl.Float64).alias(d.key)
    x = _column(d.source)
    if d.source in schema and schema[d.source].is_float():
        # Null unless finite, like the recorder's isfinite. abs() < inf is false for NaN too (polars orders
        # NaN above inf); on 20M token rows is_finite() made the query ~15% slower, this was as fast as the
        # NaN-only fill_nan(None) it replaced.
        x = pl.when(x.abs() < float("inf")).then(x)
    x = x.cast(pl.Float64)
    if cond is not None:
        x = pl.when(cond).then(x)
    if d.reduction == "max":
        return x.max().alias(d.key)
    if d.reduction == "mean":
        return (_sum(x, ordered) / x.count() if ordered else x.mean()).alias(d.key)
    # cv: aggregates.finalize's formula from the same sums, so both give the same float64 (not a two-pass sd)
    n, total = x.count(), _sum(x, ordered)
    mean = total / n
    cv = (_sum(x.pow(2), ordered) / n - mean * mean).clip(lower_bound=0.0).sqrt() / mean
    return pl.when((n > 0) & (total > 0)).then(cv).otherwise(float("nan")).alias(d.key)


def _sum(x: pl.Expr, ordered: bool) -> pl.Expr:
    """Sum of the non-null values; ``ordered``: in sorted order, strictly left to right (cum_sum), and null
    when there is none, so that an ordered mean is null where ``mean()`` is."""
    if not ordered:
        return x.sum()
    return x.sort(nulls_last=False).cum_sum().last()  # nulls sort first: the last value is the total


def _column(name: str) -> pl.Expr:
    """A metric source or mask column over the Parquet tables (metric_defs names)."""
    return metric_defs.resolve(name, lambda n: _STORED[n][1] if n in _STORED else pl.col(n))


def rollout_aggregates(run: RunSource, *, phase: str = "train") -> pl.DataFrame:
    """Per-step rollout aggregates of one phase: :data:`ROLLOUT_SERIES` plus ``rollout/tokens`` (the
    response tokens of the step's rollouts, to check token-table completeness)."""
    schema = {"step": pl.Int64, **{c: pl.Float64 for c in ROLLOUT_SERIES}, _ROLLOUT_TOKENS: pl.Float64}
    parts = [p for p in run.parts("rollouts") if p.phase == phase]
    if not parts:
        return pl.DataFrame(schema=schema)
    by_step: dict[int, list[Part]] = {}
    for part in parts:
        by_step.setdefault(part.step, []).append(part)
    # compacted steps: their segment's sidecar holds these very aggregates, computed from the files it replaced
    stored, served = precomputed(by_step, ROLLOUT_AGGREGATES, _ROLLOUT_ROWS, phase=phase)
    frames = [] if stored is None else [stored]
    rest = [p for p in parts if p.step not in served]
    if rest:
        frames.append(rollout_query(scan_part_rows(rest, _ROLLOUT_PL_SCHEMA)).collect(engine="streaming"))
    return pl.concat([f.select(pl.col(c).cast(t) for c, t in schema.items()) for f in frames]).sort("step")


def rollout_query(rollouts: pl.LazyFrame) -> pl.LazyFrame:
    """Per-step rollout aggregates of these rollout rows, plus ``rollout/tokens`` and the row count.

    Its sums are ``ordered`` (:func:`metric_expr`): the same rows give the same bits on every read."""
    return rollouts.select(_ROLLOUT_COLUMNS).group_by("step").agg(
        *(metric_expr(d, _ROLLOUT_PL_SCHEMA, ordered=True) for d in metric_defs.ROLLOUT_METRICS),
        pl.col("num_tokens").cast(pl.Float64).sum().alias(_ROLLOUT_TOKENS),
        pl.len().alias(_ROLLOUT_ROWS),
    )


def length_distribution(run: RunSource, *, phase: str = "train") -> pl.DataFrame:
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
def _scan_rollouts(run: RunSource, phase: str) -> pl.LazyFrame:
    """The rollout rows of one phase, scanning only that phase's files (the file name is the phase)."""
    files = [p for p in run.parts("rollouts") if p.phase == phase]
    if not files:
        return pl.LazyFrame(schema=_ROLLOUT_PL_SCHEMA)
    return scan_part_rows(files, _ROLLOUT_PL_SCHEMA)


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
