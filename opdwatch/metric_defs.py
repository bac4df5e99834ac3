"""Every step health metric defined once: key, level, source, mask and reduction.

The recorder's reducible partials (:func:`opdwatch.aggregates.partials`), the analysis' polars expressions
(:func:`opdwatch.series.token_query`, :func:`opdwatch.series.rollout_aggregates`) and the per-rollout
means of the rollouts table (:func:`opdwatch._tables.masked_means`) are all generated from :data:`METRICS`,
so "the recorder and the analysis agree" holds by construction (tests/test_metric_defs.py checks it on
recorded runs).

Masks and derived columns are written once with ``&``, ``|`` and ``~`` over a column getter, so the same
function builds a numpy array (the getter returns arrays) and a polars expression (it returns
``pl.col``). This module imports neither numpy nor polars.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["rollout", "token"]
Reduction = Literal["mean", "count", "max", "cv"]
Getter = Callable[[str], Any]  # column name -> np.ndarray (recorder) or pl.Expr (analysis)

ROLLOUT_PREFIX = "rollout/"
TOKEN_PREFIX = "token/"
VAL_PREFIX = "val/"  # validation metrics: the same keys behind this prefix

# ---------------------------------------------------------------------------------------- keys
ROLLOUT_COUNT = "rollout/count"
TRUNCATION_RATE = "rollout/truncation_rate"
REPETITION_RATE = "rollout/repetition_rate"
LOOP_RATE = "rollout/loop_rate"
MEAN_LENGTH = "rollout/mean_length"
MAX_LENGTH = "rollout/max_length"
LENGTH_CV = "rollout/length_cv"
ZLIB_TAIL_RATIO_MEAN = "rollout/zlib_tail_ratio_mean"
ACCURACY = "rollout/accuracy"
TOKEN_COUNT = "token/count"
STUDENT_LOGP_MEAN = "token/student_logp_mean"
TEACHER_LOGP_MEAN = "token/teacher_logp_mean"
REF_LOGP_MEAN = "token/ref_logp_mean"
ADVANTAGE_MEAN = "token/advantage_mean"
ADV_REPETITIVE_MEAN = "token/adv_repetitive_mean"
ADV_REGULAR_MEAN = "token/adv_regular_mean"
ADV_TAIL_MEAN = "token/adv_tail_mean"
REPETITIVE_SHARE = "token/repetitive_share"
NGRAM_REPEAT_SHARE = "token/ngram_repeat_share"
TAIL_SHARE = "token/tail_share"
EOS_ADVANTAGE_MEAN = "token/eos_advantage_mean"


def val(key: str) -> str:
    """The validation twin of a step-metric key (``val/rollout/accuracy``)."""
    return VAL_PREFIX + key


VAL_TRUNCATION_RATE = val(TRUNCATION_RATE)
VAL_ACCURACY = val(ACCURACY)

# ------------------------------------------------------------------------- derived columns, masks
# Columns computed from stored ones. A repetitive token lies in a repetitive tail or ends a repeated n-gram.
DERIVED: dict[str, Callable[[Getter], Any]] = {
    "rep": lambda c: c("rep_tail") | c("rep_ngram"),
}


def resolve(name: str, base: Getter) -> Any:
    """Column ``name`` from ``base`` (stored columns), building :data:`DERIVED` ones from their inputs."""
    if name in DERIVED:
        return DERIVED[name](lambda n: resolve(n, base))
    return base(name)


@dataclass(frozen=True)
class Mask:
    name: str                   # unique; also the cache key for the numpy form
    where: Callable[[Getter], Any]  # row predicate over (resolved) columns, using only & | ~


LOSS = Mask("loss", lambda c: c("loss_mask"))
LOSS_REP = Mask("loss&rep", lambda c: c("loss_mask") & c("rep"))
LOSS_REGULAR = Mask("loss&~rep", lambda c: c("loss_mask") & ~c("rep"))
LOSS_TAIL = Mask("loss&tail", lambda c: c("loss_mask") & c("rep_tail"))
# EOS advantage is the precursor: it turns negative just before collapse (the teacher, primed by a repeat,
# stops wanting to stop). Not loss-masked: some loops mask EOS, we still want to see it.
EOS = Mask("eos", lambda c: c("eos"))


# ---------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class MetricDef:
    key: str                    # step-metric key and series column, e.g. "token/adv_tail_mean"
    level: Level                # rollout: one value per rollout (rollout table, never thinned); token: per token
    source: str | None          # column reduced (stored or DERIVED; bools count as 0/1); None for counts
    mask: Mask | None           # rows that count; None: every row of the level
    # mean: of the finite values (NaN/inf/null ignored; NaN/null if none); count: rows in the mask;
    # max: largest value (0 with no rows); cv: population sd / mean (NaN if no rows or mean <= 0)
    reduction: Reduction
    # cv only: the mean metric (same source and mask) whose sum:/n: partials it shares; it adds sq:<that key>
    moments_of: str | None = None
    # token means only: the rollouts-table column holding the same mean per rollout
    rollout_column: str | None = None

    @property
    def partial_key(self) -> str:
        """The name behind ``sum:``/``n:``/``max:``/``sq:`` in the partials (aggregates)."""
        return self.moments_of or self.key


def _r(key: str, source: str | None, reduction: Reduction, **kw: Any) -> MetricDef:
    return MetricDef(key, "rollout", source, None, reduction, **kw)


def _t(key: str, source: str | None, mask: Mask, reduction: Reduction, **kw: Any) -> MetricDef:
    return MetricDef(key, "token", source, mask, reduction, **kw)


# Display order (the series' column order). Rollout sources: columns of the rollouts table, except
# "looping" (the rollout ends in an n-gram loop; stored as a non-null loop_onset).
METRICS: tuple[MetricDef, ...] = (
    _r(ROLLOUT_COUNT, None, "count"),
    _r(TRUNCATION_RATE, "truncated", "mean"),
    _r(REPETITION_RATE, "repetitive", "mean"),  # rollout-level zlib rule
    _r(LOOP_RATE, "looping", "mean"),
    _r(MEAN_LENGTH, "num_tokens", "mean"),
    _r(MAX_LENGTH, "num_tokens", "max"),
    # A few rollouts starting to loop spread the lengths before they move the mean (in real tiny runs
    # the spread rose 1-2 steps earlier).
    _r(LENGTH_CV, "num_tokens", "cv", moments_of=MEAN_LENGTH),
    _r(ZLIB_TAIL_RATIO_MEAN, "zlib_tail_ratio", "mean"),
    _r(ACCURACY, "correct", "mean"),  # unknown correctness (NaN / null) is left out
    _t(TOKEN_COUNT, None, LOSS, "count"),
    _t(STUDENT_LOGP_MEAN, "student_logp", LOSS, "mean", rollout_column="student_logp_mean"),
    _t(TEACHER_LOGP_MEAN, "teacher_logp", LOSS, "mean", rollout_column="teacher_logp_mean"),
    _t(REF_LOGP_MEAN, "ref_logp", LOSS, "mean"),
    _t(ADVANTAGE_MEAN, "advantage", LOSS, "mean", rollout_column="advantage_mean"),
    _t(ADV_REPETITIVE_MEAN, "advantage", LOSS_REP, "mean"),
    _t(ADV_REGULAR_MEAN, "advantage", LOSS_REGULAR, "mean"),
    _t(ADV_TAIL_MEAN, "advantage", LOSS_TAIL, "mean"),
    _t(REPETITIVE_SHARE, "rep", LOSS, "mean", rollout_column="repetitive_token_share"),
    _t(NGRAM_REPEAT_SHARE, "rep_ngram", LOSS, "mean"),
    _t(TAIL_SHARE, "rep_tail", LOSS, "mean"),
    _t(EOS_ADVANTAGE_MEAN, "advantage", EOS, "mean"),
)
ROLLOUT_METRICS = tuple(d for d in METRICS if d.level == "rollout")
TOKEN_METRICS = tuple(d for d in METRICS if d.level == "token")
BY_KEY = {d.key: d for d in METRICS}


def _check(metrics: tuple[MetricDef, ...]) -> None:
    """Invariants the generated forms rely on (checked at import, so a bad edit of the table fails loudly)."""
    by_key = {d.key: d for d in metrics}
    problems = [] if len(by_key) == len(metrics) else ["duplicate key"]
    for d in metrics:
        if (d.source is None) != (d.reduction == "count"):
            problems.append(f"{d.key}: counts and only counts have no source")
        if d.reduction == "cv":
            base = by_key.get(d.moments_of or "")
            if base is None or (base.source, base.mask, base.reduction) != (d.source, d.mask, "mean"):
                problems.append(f"{d.key}: moments_of must name the mean of the same source and mask")
        if d.rollout_column is not None and (d.level, d.reduction) != ("token", "mean"):
            problems.append(f"{d.key}: only token means have a per-rollout column")
    if problems:
        raise ValueError("metric table: " + "; ".join(problems))


_check(METRICS)


def columns_read(d: MetricDef) -> tuple[str, ...]:
    """The stored columns metric ``d`` reads: its source and its mask's, DERIVED ones expanded."""
    seen: dict[str, None] = {}

    def stored(name: str) -> _Probe:
        seen[name] = None
        return _Probe()

    if d.source is not None:
        resolve(d.source, stored)
    if d.mask is not None:
        d.mask.where(lambda name: resolve(name, stored))
    return tuple(seen)


def stored_columns(level: Level) -> tuple[str, ...]:
    """The stored columns the metrics of ``level`` read, in table order: what a scan of that level's table
    must select."""
    return tuple(dict.fromkeys(c for d in METRICS if d.level == level for c in columns_read(d)))


def metrics_reading(columns: frozenset[str]) -> tuple[str, ...]:
    """Keys of the metrics that read any of ``columns`` (through their source or their mask)."""
    return tuple(d.key for d in METRICS if columns.intersection(columns_read(d)))


class _Probe:
    """Stand-in for a column while walking a predicate: accepts & | ~ and records nothing itself."""

    def __and__(self, other: object) -> _Probe:
        return self

    __or__ = __and__

    def __invert__(self) -> _Probe:
        return self


class Columns:
    """One level's columns by name for the numpy forms: the stored arrays (None where not given) plus
    :data:`DERIVED` columns and masks, each built once (a step's masks are shared by several metrics)."""

    def __init__(self, stored: dict[str, Any], rows: int) -> None:
        self.rows = rows  # rollouts or tokens at this level (what an unmasked count counts)
        self._cache = dict(stored)

    def __call__(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = DERIVED[name](self)  # KeyError: neither stored nor derived
        return self._cache[name]

    def mask(self, mask: Mask | None) -> Any:
        if mask is None:
            return None
        key = f"mask:{mask.name}"
        if key not in self._cache:
            self._cache[key] = mask.where(self)
        return self._cache[key]
