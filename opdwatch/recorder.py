"""Record an OPD run from any training loop.

    rec = Recorder.create("runs/exp1", config=cfg, tokenizer_info={"eos_token_ids": [eos]})
    rec.record_step(step, token_ids=ids, student_logp=s, teacher_logp=t, finish_reasons=fr, texts=txt)
    rec.event("checkpoint", step=step, message="saved", path=str(ckpt))
    rec.close()

``record_step`` takes plain arrays or torch tensors (ragged lists or padded (B, T) with ``lengths``),
derives every health field itself (advantage, truncation, zlib tail ratio, repetitive flags, step
aggregates) with the functions in :mod:`opdwatch.metrics`, and writes rollout rows, token rows and the
step's metrics row as Parquet partitions of the run directory (format: docs/run-format.md).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from opdwatch import _tables, aggregates
from opdwatch import run_dir as run_dir_ops
from opdwatch._ragged import flatten, offsets_from_lengths, per_rollout, to_numpy
from opdwatch.atomic import write_parquet
from opdwatch.background_compaction import BackgroundCompactor
from opdwatch.errors import OpdwatchError
from opdwatch.format import (
    EVENT_KINDS,
    FINISH_REASONS,
    MANIFEST,
    PHASES,
    ROLLOUT_SCHEMA,
    SOURCES,
    STEP_KEY_COLUMNS,
    events_path,
    part_path,
)
from opdwatch.manifest import new_manifest, read_manifest, write_manifest
from opdwatch.metric_defs import ROLLOUT_COUNT, Columns, metrics_reading
from opdwatch.rollout_fields import RolloutFields, derive_fields

# Stored columns that derive_fields computes (truncation is not among them: it comes from the finish reasons), and
# the step metrics that read them: unknown (NaN) for a step whose derivation failed
DERIVED_FIELD_COLUMNS = frozenset({"repetitive", "looping", "zlib_tail_ratio", "rep_ngram", "rep_tail", "eos"})
UNDERIVED_METRICS = metrics_reading(DERIVED_FIELD_COLUMNS)


@dataclass(frozen=True)
class RecorderSettings:
    # Repetition rule (paper Sec. 3.2): a rollout is repetitive if len(text) >= tail_window and the zlib
    # ratio of its last tail_window characters is < tail_threshold. Defaults: see opdwatch.metrics.
    tail_window: int = 10_000
    tail_threshold: float = 0.1
    # Token-level repeat flag: the n-gram ending at a token occurred earlier in the rollout.
    ngram_n: int = 5
    # A rollout "loops" when it ends in at least this many consecutive repeated n-grams.
    loop_min_run: int = 32
    # Thinning: token rows only every k-th step, for this fraction of rollouts (chosen by a hash of
    # step, rank and rollout, so reruns thin identically). Rollout rows and step metrics stay exact.
    token_every_k_steps: int = 1
    token_rollout_fraction: float = 1.0
    # An exception while deriving the health fields is recorded as an error event and the rows are written
    # without them (NaN health metrics); strict re-raises instead (tests, CI). See opdwatch.alerts.boundary.
    strict: bool = False
    # Compaction (docs/run-format.md, format 1.1; rank 0): a background pass every k steps rewrites the final
    # steps' small files into large segments (0: never), and one more pass on close if compact_on_close.
    compact_every_steps: int = 0
    compact_on_close: bool = False

    def validate(self) -> None:
        # The one place these bounds live: the trainer's `recorder:` section is this class (trainer/config.py).
        # Messages start with the field's name, so a config tree reports it as recorder.<field>.
        if self.tail_window < 1:
            raise OpdwatchError(f"tail_window must be >= 1, got {self.tail_window}")
        if not 0.0 < self.tail_threshold <= 2.0:
            raise OpdwatchError(f"tail_threshold must be in (0, 2], got {self.tail_threshold}")
        if self.ngram_n < 1 or self.loop_min_run < 1 or self.token_every_k_steps < 1:
            raise OpdwatchError("ngram_n, loop_min_run and token_every_k_steps must be >= 1")
        if not 0.0 <= self.token_rollout_fraction <= 1.0:
            raise OpdwatchError(f"token_rollout_fraction must be in [0, 1], got {self.token_rollout_fraction}")
        if self.compact_every_steps < 0:
            raise OpdwatchError(f"compact_every_steps must be >= 0, got {self.compact_every_steps}")


class Recorder:
    """Writes one rank's share of a run. Rank 0 also owns the manifest and the step-metrics table."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], settings: RecorderSettings, rank: int,
                 eos_ids: np.ndarray, special_ids: np.ndarray, live: bool = True) -> None:
        self.run_dir = run_dir
        self._live = live
        self.manifest = manifest
        self.settings = settings
        self.rank = rank
        self._eos_ids = eos_ids
        self._special_ids = special_ids
        self._chunks: dict[tuple[int, str], int] = {}          # (step, phase) -> files written
        self._partials: dict[tuple[int, str], aggregates.Partials] = {}
        self._extra: dict[tuple[int, str], dict[str, float]] = {}
        self._underived: dict[tuple[int, str], bool] = {}  # (step, phase) whose derived fields failed
        self._guard: Any = None  # opdwatch.alerts.boundary.Boundary, made at the first failure
        self._closed = False
        self._compactor = BackgroundCompactor(run_dir, every_steps=settings.compact_every_steps,
                                              on_close=settings.compact_on_close) if rank == 0 else None

    # ----------------------------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, run_dir: str | os.PathLike[str], *, config: dict[str, Any] | None = None,
               tokenizer_info: dict[str, Any] | None = None, settings: RecorderSettings | None = None,
               rank: int = 0, world_size: int = 1, run_id: str | None = None,
               resume_from_step: int | None = None, live: bool = True) -> Recorder:
        """Open a run directory for writing.

        ``live=False``: nobody reads the run until it is closed (an import into a hidden temp directory), so
        the manifest's last step and heartbeat are written on close only, not fsynced after every step (on
        this machine's disk that was a third of a 1,000-step import's time).

        A new run needs an empty or missing directory. ``resume_from_step=N`` reopens an existing run and
        drops this rank's records of steps after N (they will be recorded again), so a resumed run has
        no duplicated or missing steps. Either way, temp files that killed writers of this rank left
        behind are removed (never those of a live process).
        """
        settings = settings or RecorderSettings()
        settings.validate()
        tok = dict(tokenizer_info or {})
        tok.setdefault("eos_token_ids", [])
        tok.setdefault("special_token_ids", [])
        run_dir = Path(run_dir)
        if resume_from_step is None:
            if rank == 0 and (run_dir / MANIFEST).exists():
                raise OpdwatchError(f"{run_dir}: a run is already recorded here (resume it or choose a new directory)")
            if rank == 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                run_dir_ops.sweep_stale_temps(run_dir, rank)  # e.g. a first manifest write that was killed
                manifest = new_manifest(run_id=run_id or f"{run_dir.name}-{uuid.uuid4().hex[:8]}",
                                        config=config or {}, tokenizer=tok,
                                        recorder_settings=asdict(settings), world_size=world_size)
                manifest["pid"] = os.getpid()
                write_manifest(run_dir, manifest)
            else:  # other ranks wait for rank 0's manifest rather than racing it
                manifest = run_dir_ops.wait_for_manifest(run_dir)
                run_dir_ops.sweep_stale_temps(run_dir, rank)
        else:
            manifest = read_manifest(run_dir)
            run_dir_ops.sweep_stale_temps(run_dir, rank)  # before drop_after: partitions it empties go whole
            run_dir_ops.drop_after(run_dir, rank, resume_from_step)
            if rank == 0:
                manifest.update(status="running", last_step=resume_from_step, pid=os.getpid())
                if config is not None:
                    manifest["config"] = config
                write_manifest(run_dir, manifest)
        rec = cls(run_dir, manifest, settings, rank,
                  np.asarray(tok["eos_token_ids"], dtype=np.int64),
                  np.asarray(tok["special_token_ids"], dtype=np.int64), live=live)
        if resume_from_step is not None:
            rec.event("resume", step=resume_from_step, message=f"resumed after step {resume_from_step}")
        return rec

    def close(self, status: str = "finished") -> None:
        if self._closed:
            return
        self._closed = True
        if self.rank == 0:
            self.manifest["status"] = status
            write_manifest(self.run_dir, self.manifest)
        if self._compactor is not None:
            self._compactor.close()  # after the status: a finished one-rank run is final everywhere

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.event("error", message=f"{exc_type.__name__}: {exc}"[:500])
        self.close("failed" if exc_type is not None else "finished")

    # --------------------------------------------------------------------------------- recording
    def record_step(
        self,
        step: int,
        *,
        token_ids: Any,
        finish_reasons: Any,
        texts: list[str],
        phase: str = "train",
        lengths: Any = None,
        student_logp: Any = None,
        teacher_logp: Any = None,
        ref_logp: Any = None,
        advantage: Any = None,
        loss_mask: Any = None,
        char_ends: Any = None,
        prompt_ids: Any = None,
        sample_index: Any = None,
        source: Any = None,
        prompt_texts: Any = None,
        correct: Any = None,
        metrics: dict[str, float] | None = None,
        write_metrics: bool | None = None,
    ) -> dict[str, float]:
        """Record one batch of rollouts for ``step`` and return the step's health metrics.

        Per-token arguments are ragged lists of 1-D arrays or padded (B, T) arrays with ``lengths``
        (B,); ``finish_reasons`` is "eos" or "length" per rollout. Several calls for the same step and
        phase (e.g. one per minibatch) accumulate. ``write_metrics`` (default: when world_size is 1)
        writes the metrics row; distributed loops instead all-reduce :meth:`partials` and call
        :meth:`log_metrics` on rank 0.
        """
        if phase not in PHASES:
            raise OpdwatchError(f"phase must be one of {PHASES}, got {phase!r}")
        t0 = time.perf_counter()
        lengths_arr = None if lengths is None else to_numpy(lengths, np.int64).reshape(-1)
        ids, lens = flatten("token_ids", token_ids, lengths_arr, np.int64)
        offsets = offsets_from_lengths(lens)
        count = len(lens)

        def tok(name: str, values: Any, dtype: Any) -> np.ndarray | None:
            return None if values is None else flatten(name, values, lens, dtype)[0]

        s_lp = tok("student_logp", student_logp, np.float32)
        t_lp = tok("teacher_logp", teacher_logp, np.float32)
        r_lp = tok("ref_logp", ref_logp, np.float32)
        adv = tok("advantage", advantage, np.float32)
        if adv is None and s_lp is not None and t_lp is not None:
            adv = t_lp - s_lp  # sampled-token reverse-KL advantage
        mask = tok("loss_mask", loss_mask, bool)
        mask = np.ones(len(ids), dtype=bool) if mask is None else mask
        ends = tok("char_ends", char_ends, np.int64)
        reasons = [str(r) for r in per_rollout("finish_reasons", finish_reasons, count, None)]
        if bad := sorted({r for r in reasons if r not in FINISH_REASONS}):
            raise OpdwatchError(f"finish_reasons must be 'eos' or 'length', got {bad[:3]}")
        if len(texts) != count:
            raise OpdwatchError(f"texts: {len(texts)} values for {count} rollouts")
        default_source = "val" if phase == "val" else "onpolicy"
        sources = [str(s) for s in per_rollout("source", source, count, default_source)]
        if bad := sorted({s for s in sources if s not in SOURCES}):
            raise OpdwatchError(f"source must be one of {SOURCES}, got {bad[:3]}")

        try:
            f = derive_fields(ids, offsets, texts, reasons, ends, self.settings, self._eos_ids)
        except Exception as exc:  # never hurt the run: record the error, write the rows without health fields
            f = self._underived_fields(exc, (int(step), phase), lens, reasons)
        correct_list = per_rollout("correct", correct, count, None)
        correct_f = np.array([np.nan if c is None else float(bool(c)) for c in correct_list], dtype=np.float64)
        # Columns by metric_defs name; one Columns serves the step partials and the per-rollout means, so
        # derived columns and masks are built once.
        roll_cols = Columns({"num_tokens": lens, "truncated": f.truncated, "repetitive": f.repetitive,
                             "looping": f.loop_onset >= 0, "zlib_tail_ratio": f.tail_ratio,
                             "correct": correct_f}, count)
        tok_cols = Columns({"student_logp": s_lp, "teacher_logp": t_lp, "ref_logp": r_lp, "advantage": adv,
                            "loss_mask": mask, "rep_ngram": f.rep_ngram, "rep_tail": f.rep_tail, "eos": f.eos},
                           len(ids))
        part = aggregates.partials_of(roll_cols, tok_cols)
        key = (int(step), phase)
        chunk = self._chunks.get(key, 0)
        first_rollout = self._partials_count(key)
        self._partials[key] = aggregates.merge([self._partials.get(key, {}), part])
        self._chunks[key] = chunk + 1
        self._forget_before(int(step))  # every rank, not only the one that logs metrics

        rollout_idx = np.arange(first_rollout, first_rollout + count, dtype=np.int64)
        per_rollout_means = _tables.masked_means(offsets, tok_cols)
        keep = self._token_keep(int(step), rollout_idx)
        rollouts = pa.table({
            "step": pa.array(np.full(count, step, dtype=np.int64)),
            "rank": pa.array(np.full(count, self.rank, dtype=np.int32)),
            "rollout": pa.array(rollout_idx),
            "phase": pa.array([phase] * count, pa.string()),
            "prompt_id": pa.array([None if p is None else str(p) for p in
                                   per_rollout("prompt_ids", prompt_ids, count, None)], pa.string()),
            "sample_index": pa.array(per_rollout("sample_index", sample_index, count, 0), pa.int32()),
            "source": pa.array(sources, pa.string()),
            "num_tokens": pa.array(lens.astype(np.int32)),
            "finish_reason": pa.array(reasons, pa.string()),
            "truncated": pa.array(f.truncated),
            "zlib_tail_ratio": pa.array(f.tail_ratio),
            "repetitive": pa.array(f.repetitive),
            "seq_rep_n": pa.array(f.seq_rep),
            "loop_onset": pa.array(f.loop_onset.astype(np.int32), mask=f.loop_onset < 0),
            "correct": pa.array([None if c is None else bool(c) for c in correct_list], pa.bool_()),
            **{name: pa.array(vals, mask=~np.isfinite(vals)) for name, vals in per_rollout_means.items()},
            "tokens_recorded": pa.array(keep & (s_lp is not None or t_lp is not None or adv is not None)),
            "prompt_text": pa.array(per_rollout("prompt_texts", prompt_texts, count, None), pa.string()),
            "text": pa.array(list(texts), pa.string()),
        })
        name = phase if chunk == 0 else f"{phase}-{chunk}"
        rollouts = rollouts.select(ROLLOUT_SCHEMA.names).cast(ROLLOUT_SCHEMA)
        write_parquet(rollouts, part_path(self.run_dir, "rollouts", int(step), self.rank, name))
        if keep.any() and (s_lp is not None or t_lp is not None or adv is not None):
            token_table = _tables.token_table(int(step), self.rank, rollout_idx, lens, offsets, keep, ids, s_lp, t_lp,
                                       r_lp, adv, mask, np.isin(ids, self._special_ids), f, ends)
            write_parquet(token_table, part_path(self.run_dir, "tokens", int(step), self.rank, name),
                          dictionary_columns=["step", "rank", "rollout"],
                          stats_columns=["step", "rank", "rollout", "position"])

        result = aggregates.finalize(self._partials[key])
        if key in self._underived:
            result.update(dict.fromkeys(UNDERIVED_METRICS, math.nan))
        # time/record: this call alone on this rank (derive fields, write Parquet); the trainer's whole recording
        # phase (decoding, offsets, the all-reduce) is its own time/record_total
        result["time/record"] = time.perf_counter() - t0
        if metrics:
            result.update({k: float(v) for k, v in metrics.items()})
        if write_metrics is None:
            write_metrics = int(self.manifest.get("world_size", 1)) == 1
        if write_metrics:
            self.log_metrics(int(step), phase, result)
        return result

    def partials(self, step: int, phase: str = "train") -> aggregates.Partials:
        """This rank's reducible sums for (step, phase), to all-reduce across ranks (see aggregates)."""
        return dict(self._partials.get((int(step), phase), {}))

    def log_metrics(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        """Merge float metrics into the (step, phase) metrics row and rewrite it (rank 0 only)."""
        if phase not in PHASES:
            raise OpdwatchError(f"phase must be one of {PHASES}, got {phase!r}")
        if self.rank != 0:
            return
        key = (int(step), phase)
        row = self._extra.setdefault(key, {})
        row.update({k: float(v) for k, v in metrics.items() if k not in STEP_KEY_COLUMNS})
        cols: dict[str, pa.Array] = {
            "step": pa.array([int(step)], pa.int64()), "phase": pa.array([phase]),
            "rank": pa.array([0], pa.int32()), "time": pa.array([time.time()], pa.float64()),
        }
        cols.update({k: pa.array([v], pa.float64()) for k, v in sorted(row.items())})
        # One row: neither zstd nor dictionaries save anything on it, and skipping them made the write 2.5x
        # faster (3.5 -> 1.4 ms for 50 metrics) and the file smaller (15.1 -> 12.8 kB).
        write_parquet(pa.table(cols), part_path(self.run_dir, "steps", int(step), 0, phase), compression="none",
                      dictionary_columns=[])
        self._forget_before(int(step))
        if self.manifest.get("last_step") is None or step > self.manifest["last_step"]:
            self.manifest["last_step"] = int(step)
        if self._live:
            write_manifest(self.run_dir, self.manifest)
        if self._compactor is not None:
            self._compactor.after_step(int(step))

    def event(self, kind: str, *, step: int | None = None, message: str = "", **data: Any) -> dict[str, Any]:
        """Append an event (warning, alarm, intervention, checkpoint, error, ...) to this rank's log."""
        if kind not in EVENT_KINDS:
            raise OpdwatchError(f"event kind must be one of {EVENT_KINDS}, got {kind!r}")
        record = {"time": time.time(), "step": step, "rank": self.rank, "kind": kind, "message": message,
                  "data": data}
        path = events_path(self.run_dir, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=_json_default) + "\n"
        with open(path, "a", encoding="utf-8") as fh:  # one write per line: appends of a line stay whole
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return record

    # ---------------------------------------------------------------------------------- helpers
    def _partials_count(self, key: tuple[int, str]) -> int:
        return int(self._partials.get(key, {}).get(f"sum:{ROLLOUT_COUNT}", 0))

    def _forget_before(self, step: int) -> None:
        # Keep a few recent steps so late log_metrics calls still merge; older state is dropped.
        for store in (self._extra, self._partials, self._chunks, self._underived):
            for key in [k for k in store if k[0] < step - 2]:
                del store[key]

    def _underived_fields(self, exc: Exception, key: tuple[int, str], lens: np.ndarray,
                          reasons: list[str]) -> RolloutFields:
        """After ``derive_fields`` raised: an ``error`` event (printed once), and fields that say "unknown"
        (NaN ratios, nothing flagged) so the rows are still written; the step's metrics that depend on them
        become NaN (:data:`UNDERIVED_METRICS`). Re-raises when ``settings.strict``."""
        from opdwatch.alerts.boundary import Boundary  # only on a failure

        self._guard = self._guard or Boundary(self, strict=self.settings.strict)
        if not self._guard.caught("recorder derived fields", exc, step=key[0]):
            raise exc
        self._underived[key] = True
        n, r = int(lens.sum()), len(lens)
        none = np.zeros(n, dtype=bool)
        return RolloutFields(truncated=np.array([x == "length" for x in reasons], dtype=bool),
                             tail_ratio=np.full(r, np.nan), repetitive=np.zeros(r, dtype=bool),
                             seq_rep=np.full(r, np.nan), loop_onset=np.full(r, -1, dtype=np.int64),
                             rep_ngram=none, rep_tail=none.copy(), eos=none.copy())

    def _token_keep(self, step: int, rollout_idx: np.ndarray) -> np.ndarray:
        s = self.settings
        if step % s.token_every_k_steps != 0:
            return np.zeros(len(rollout_idx), dtype=bool)
        if s.token_rollout_fraction >= 1.0:
            return np.ones(len(rollout_idx), dtype=bool)
        with np.errstate(over="ignore"):
            h = (rollout_idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                 + np.uint64(step * 1_000_003 + self.rank)) * np.uint64(0xBF58476D1CE4E5B9)
        return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < s.token_rollout_fraction


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays, paths: event data straight from a training loop."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return str(obj)
