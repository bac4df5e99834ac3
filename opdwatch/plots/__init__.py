"""Plotly figures of a run, shared by ``opdwatch analyze`` (report.html), the notebooks and the dashboard.

Step figures take ``series`` (run label -> :func:`opdwatch.series.step_series` frame; several runs are
overlaid) and keyword-only ``events`` (run label -> ``Run.events()`` frame), ``onsets`` (run label ->
onset step or None) and ``episodes`` (run label -> collapse episode spans, shaded). Every trace puts the
step first in ``customdata``, so a click gives the step.
No data is read here: figures are pure functions of frames.
"""

from opdwatch.plots.tokens import fig_token_view
from opdwatch.plots.training import (
    fig_length_distribution,
    fig_logprobs_length,
    fig_repetitive_advantage,
    fig_synchronised_spikes,
    fig_truncation_repetition,
)

__all__ = [
    "fig_length_distribution",
    "fig_logprobs_length",
    "fig_repetitive_advantage",
    "fig_synchronised_spikes",
    "fig_token_view",
    "fig_truncation_repetition",
]
