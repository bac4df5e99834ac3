import numpy as np

from opdwatch.detector.replay import collapse_step
from opdwatch.detector.simulate import TraceSpec, first_at_least, random_collapse, random_stable, simulate


def test_collapsing_trace_collapses_near_its_onset_with_precursors_leading():
    rows = simulate(TraceSpec(steps=200, onset=120, width=1.0, precursor_lead=7, seed=1))
    collapse = collapse_step(rows)
    assert collapse is not None and 117 <= collapse <= 124
    pre = first_at_least(rows, "token/repetitive_share", 0.06)
    assert pre is not None and pre <= collapse - 4  # the repetitive-token share moves first
    early = [m["token/eos_advantage_mean"] for s, m in rows if s < 100]
    late = [m["token/eos_advantage_mean"] for s, m in rows if collapse - 2 <= s <= collapse]
    assert np.mean(early) > 0 > np.mean(late)


def test_stable_trace_never_reaches_half_truncation_and_is_reproducible():
    spec = TraceSpec(steps=300, onset=None, spikes=3, seed=4)
    rows = simulate(spec)
    assert collapse_step(rows) is None and len(rows) == 300
    assert rows == simulate(spec)


def test_random_specs_cover_the_regimes():
    rng = np.random.default_rng(0)
    fast, slow = random_collapse(rng, regime="fast", seed=1), random_collapse(rng, regime="slow", seed=2)
    assert fast.onset < 40 < 150 <= slow.onset and fast.width < slow.width + 1
    assert random_collapse(rng, regime="stress", seed=3).precursor_lead == 0
    assert random_stable(rng, seed=5).onset is None
