"""Active probes of the loop incentive: does the teacher reward continuing a started loop, and penalise stopping?

Before a run (`opdwatch probe`, :func:`run_probe`) and during one (the trainer's in-run probe, or
:func:`probe_metrics` from any loop): counterfactual continuations of responses (the last chunk repeated, EOS at
the natural end and after repeats) are scored by teacher and student; the advantage per copy index, the loop
incentive and the EOS advantage after a repeat give a risk verdict (docs/probe.md). Importing this package needs
no torch; scoring imports it on use.
"""

from opdwatch.probe.api import ProbeSet, make_probe_set, probe_metrics, probe_summary, teacher_scores
from opdwatch.probe.counterfactual import ChunkSpec, Counterfactual, build_counterfactual, eos_sequence, last_chunk
from opdwatch.probe.run import ProbeReport, ProbeSettings, run_probe
from opdwatch.probe.summary import HEADLINE_KEYS, ProbeSummary, RowScores, summarize, with_deltas
from opdwatch.probe.verdict import RiskThresholds, RiskVerdict, risk_verdict

__all__ = [
    "HEADLINE_KEYS",
    "ChunkSpec",
    "Counterfactual",
    "ProbeReport",
    "ProbeSet",
    "ProbeSettings",
    "ProbeSummary",
    "RiskThresholds",
    "RiskVerdict",
    "RowScores",
    "build_counterfactual",
    "eos_sequence",
    "last_chunk",
    "make_probe_set",
    "probe_metrics",
    "probe_summary",
    "risk_verdict",
    "run_probe",
    "summarize",
    "teacher_scores",
    "with_deltas",
]
