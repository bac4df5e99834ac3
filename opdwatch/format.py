"""Run directory format v1: layout, table schemas and file naming. docs/run-format.md is the prose
version of this module; keep the two in step.

    RUN_DIR/
      manifest.json                                 # rank 0, rewritten atomically
      steps/step=000012/rank=00000/train.parquet    # one metrics row per (step, phase)
      rollouts/step=000012/rank=00003/val.parquet   # one row per rollout
      tokens/step=000012/rank=00003/train.parquet   # one row per response token (may be thinned)
      events/rank=00000.jsonl                       # append-only, one JSON object per line
      compacted/steps=000000-000499/                # format 1.1: finished steps rewritten into segments

Partitions are hive style (``key=value``) by step and writer rank, so ranks write without coordinating
and readers pick up a new step by listing one more directory. Every Parquet file is written under a
hidden name (``.name.tmp-<pid>``) and renamed into place, so a file either exists whole or not at all.
Format 1.1 adds compacted segments (:mod:`opdwatch.segments`, :mod:`opdwatch.compaction`): a committed
segment supersedes the step partitions of its step range; a run without ``compacted/`` is a 1.0 run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    ROLLOUT_SCHEMA: pa.Schema
    TOKEN_SCHEMA: pa.Schema
    STEP_KEY_COLUMNS: dict[str, pa.DataType]

FORMAT_NAME = "opdwatch-run"
FORMAT_VERSION = 1
FORMAT_MINOR = 1  # 1.1: compacted segments; the manifest keeps format_version 1 (see docs/run-format.md)
MANIFEST = "manifest.json"
TABLES = ("steps", "rollouts", "tokens")
EVENTS_DIR = "events"
PHASES = ("train", "val")
SOURCES = ("onpolicy", "golden", "val")
FINISH_REASONS = ("eos", "length")
STATUSES = ("running", "finished", "failed")
EVENT_KINDS = (
    "info", "warning", "alarm", "intervention", "checkpoint", "error", "resume", "skip_update", "alert",
)

# The Arrow schemas of the tables are built when first imported (`from opdwatch.format import ROLLOUT_SCHEMA`,
# through __getattr__ below): pyarrow costs ~0.15 s of a command's start, and `opdwatch info` on a compacted run
# reads no file through it.
_ARROW_NAMES = ("ROLLOUT_SCHEMA", "TOKEN_SCHEMA", "STEP_KEY_COLUMNS")


def _arrow_schemas() -> dict[str, Any]:
    import pyarrow as pa

    ROLLOUT_SCHEMA = pa.schema([
        pa.field("step", pa.int64()),
        pa.field("rank", pa.int32()),
        pa.field("rollout", pa.int64()),            # index of the rollout within (step, rank, phase)
        pa.field("phase", pa.string()),             # train | val
        pa.field("prompt_id", pa.string()),
        pa.field("sample_index", pa.int32()),       # which of the prompt's samples
        pa.field("source", pa.string()),            # onpolicy | golden | val
        pa.field("num_tokens", pa.int32()),         # response tokens
        pa.field("finish_reason", pa.string()),     # eos | length
        pa.field("truncated", pa.bool_()),          # finish_reason == "length"
        pa.field("zlib_tail_ratio", pa.float64()),  # of the last tail_window characters
        pa.field("repetitive", pa.bool_()),         # metrics.is_repetitive(text, tail_window, tail_threshold)
        pa.field("seq_rep_n", pa.float64()),        # 1 - distinct/total n-grams (n = ngram_n)
        pa.field("loop_onset", pa.int32()),         # start of the trailing n-gram loop, null if none
        pa.field("correct", pa.bool_()),            # null where unknown
        pa.field("student_logp_mean", pa.float64()),  # mean over loss-masked tokens; null without log-probs
        pa.field("teacher_logp_mean", pa.float64()),
        pa.field("advantage_mean", pa.float64()),
        pa.field("repetitive_token_share", pa.float64()),  # share of tokens with rep_tail or rep_ngram
        pa.field("tokens_recorded", pa.bool_()),    # False when token rows were thinned away
        pa.field("prompt_text", pa.string()),
        pa.field("text", pa.string()),              # decoded response
    ])

    TOKEN_SCHEMA = pa.schema([
        pa.field("step", pa.int64()),
        pa.field("rank", pa.int32()),
        pa.field("rollout", pa.int64()),
        pa.field("position", pa.int32()),           # 0-based index in the response
        pa.field("token_id", pa.int32()),
        pa.field("char_end", pa.int32()),           # end offset of the token in the rollout text; null if unknown
        pa.field("student_logp", pa.float32()),     # nats
        pa.field("teacher_logp", pa.float32()),     # nats
        pa.field("ref_logp", pa.float32()),         # nats; NaN where not computed
        pa.field("advantage", pa.float32()),        # nats; teacher - student unless given
        pa.field("loss_mask", pa.bool_()),
        pa.field("special", pa.bool_()),            # token id is a special token (manifest tokenizer)
        pa.field("eos", pa.bool_()),                # the rollout's final EOS token
        pa.field("rep_tail", pa.bool_()),           # lies in the tail of a repetitive rollout
        pa.field("rep_ngram", pa.bool_()),          # n-gram ending here occurred earlier in the rollout
    ])

    # Step metrics are wide and open: these columns always exist, every other column is a float64 metric
    # with a slash-namespaced name ("rollout/truncation_rate", "time/rollout", "loss/total", ...).
    STEP_KEY_COLUMNS = {"step": pa.int64(), "phase": pa.string(), "rank": pa.int32(), "time": pa.float64()}
    return {"ROLLOUT_SCHEMA": ROLLOUT_SCHEMA, "TOKEN_SCHEMA": TOKEN_SCHEMA, "STEP_KEY_COLUMNS": STEP_KEY_COLUMNS}


def __getattr__(name: str) -> Any:
    if name not in _ARROW_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update(_arrow_schemas())
    return globals()[name]


_PART_RE = re.compile(r"step=(\d+)[/\\]rank=(\d+)[/\\]([^/\\]+)\.parquet$")


def partition_dir(run_dir: Path, table: str, step: int, rank: int) -> Path:
    return run_dir / table / f"step={step:06d}" / f"rank={rank:05d}"


def part_path(run_dir: Path, table: str, step: int, rank: int, phase: str) -> Path:
    return partition_dir(run_dir, table, step, rank) / f"{phase}.parquet"


def events_path(run_dir: Path, rank: int) -> Path:
    return run_dir / EVENTS_DIR / f"rank={rank:05d}.jsonl"


def parse_part(path: Path) -> tuple[int, int, str] | None:
    """(step, rank, phase) of a table file, or None for anything else (temp files, strays)."""
    if path.name.startswith((".", "_")):
        return None
    m = _PART_RE.search(path.as_posix())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3)
