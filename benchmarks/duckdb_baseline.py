"""DuckDB over a run's Parquet files: the per-step aggregations of ``opdwatch analyze`` (token and rollout series),
printed as JSON. Run by benchmarks/analyze_scale.py in its own process (for its peak memory):

    python benchmarks/duckdb_baseline.py RUN_DIR

The files are the run's train token and rollout files of format 1.0 (``TABLE/step=*/rank=*/train*.parquet``),
listed the way opdwatch lists them; the means are opdwatch's (``opdwatch.metric_defs``): over loss-masked tokens,
ignoring non-finite values; the EOS advantage over EOS tokens; a repetitive token is ``rep_tail OR rep_ngram``.
"""

from __future__ import annotations

import json
import os
import sys

import duckdb


def files(run: str, table: str) -> list[str]:
    out = []
    for step in sorted(os.listdir(os.path.join(run, table))):
        for rank in sorted(os.listdir(os.path.join(run, table, step))):
            d = os.path.join(run, table, step, rank)
            out += [os.path.join(d, f) for f in sorted(os.listdir(d))
                    if f.startswith("train") and f.endswith(".parquet")]
    return out


def mean(x: str, cond: str) -> str:
    return f"avg({x}::DOUBLE) FILTER (WHERE {cond} AND isfinite({x}))"


REP = "(rep_tail OR rep_ngram)"
TOKEN_SQL = f"""
SELECT step,
  (count(*) FILTER (WHERE loss_mask))::DOUBLE AS "token/count",
  {mean("student_logp", "loss_mask")} AS "token/student_logp_mean",
  {mean("teacher_logp", "loss_mask")} AS "token/teacher_logp_mean",
  {mean("ref_logp", "loss_mask")} AS "token/ref_logp_mean",
  {mean("advantage", "loss_mask")} AS "token/advantage_mean",
  {mean("advantage", "loss_mask AND " + REP)} AS "token/adv_repetitive_mean",
  {mean("advantage", "loss_mask AND NOT " + REP)} AS "token/adv_regular_mean",
  {mean("advantage", "loss_mask AND rep_tail")} AS "token/adv_tail_mean",
  avg({REP}::DOUBLE) FILTER (WHERE loss_mask) AS "token/repetitive_share",
  avg(rep_ngram::DOUBLE) FILTER (WHERE loss_mask) AS "token/ngram_repeat_share",
  avg(rep_tail::DOUBLE) FILTER (WHERE loss_mask) AS "token/tail_share",
  {mean("advantage", "eos")} AS "token/eos_advantage_mean"
FROM read_parquet($files, hive_partitioning = false) GROUP BY step ORDER BY step"""
ROLLOUT_SQL = """
SELECT step, avg(truncated::DOUBLE) AS "rollout/truncation_rate", avg(num_tokens::DOUBLE) AS "rollout/mean_length",
  avg(repetitive::DOUBLE) AS "rollout/repetition_rate", avg((loop_onset IS NOT NULL)::DOUBLE) AS "rollout/loop_rate",
  avg(correct::DOUBLE) AS "rollout/accuracy"
FROM read_parquet($files, hive_partitioning = false) GROUP BY step ORDER BY step"""


def main() -> None:
    run = sys.argv[1]
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count()}")
    tokens = con.execute(TOKEN_SQL, {"files": files(run, "tokens")}).fetchall()
    names = [d[0] for d in con.description]
    rollouts = con.execute(ROLLOUT_SQL, {"files": files(run, "rollouts")}).fetchall()
    rnames = [d[0] for d in con.description]
    by_step: dict[int, dict[str, float | None]] = {}
    for row in tokens:
        by_step.setdefault(row[0], {}).update(zip(names[1:], row[1:], strict=True))
    for row in rollouts:
        by_step.setdefault(row[0], {}).update(zip(rnames[1:], row[1:], strict=True))
    steps = sorted(by_step)
    out: dict[str, list] = {"step": steps}
    for key in names[1:] + rnames[1:]:
        out[key] = [by_step[s].get(key) for s in steps]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
