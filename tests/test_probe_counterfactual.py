"""Counterfactual construction and the probe summary on hand-made token sequences (no torch)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from opdwatch.errors import OpdwatchError
from opdwatch.probe.counterfactual import ChunkSpec, build_counterfactual, eos_sequence, last_chunk, strip_stop
from opdwatch.probe.summary import (
    EOS_ADV_NATURAL,
    EOS_ADV_REPEAT,
    LOOP_INCENTIVE,
    STUDENT_LOOP_LOGP,
    TEACHER_LOOP_LOGP,
    RowScores,
    summarize,
    with_deltas,
)
from opdwatch.probe.verdict import RiskThresholds, risk_verdict

DOT = 9  # the "sentence end" token of these hand-made sequences
EOS = 1


def test_window_chunk_is_the_last_k_tokens() -> None:
    assert last_chunk([5, 6, 7, 8, 9], ChunkSpec(mode="window", window=2)) == (8, 9)
    assert last_chunk([5, 6], ChunkSpec(mode="window", window=8)) == (5, 6)


def test_sentence_chunk_runs_from_the_second_to_last_delimiter() -> None:
    spec = ChunkSpec(mode="sentence", delimiters=frozenset({DOT}))
    # "a b . c d ." -> the last full sentence "c d ."
    assert last_chunk([3, 4, DOT, 5, 6, DOT], spec) == (5, 6, DOT)
    # an unfinished tail after the last delimiter: "a . b c" -> "b c"
    assert last_chunk([3, DOT, 5, 6], spec) == (5, 6)
    # no delimiter at all: the window fallback
    assert last_chunk([3, 4, 5, 6, 7], ChunkSpec(mode="line", window=3, delimiters=frozenset({DOT}))) == (5, 6, 7)
    assert last_chunk(list(range(10, 30)), ChunkSpec(mode="window", window=20, max_tokens=4)) == (26, 27, 28, 29)


def test_loop_sequence_copy_indices_and_eos_boundaries() -> None:
    spec = ChunkSpec(mode="sentence", delimiters=frozenset({DOT}))
    cf = build_counterfactual([20, 21], [3, 4, DOT, 5, DOT], spec, copies=3)
    assert cf.chunk == (5, DOT)
    # (a): the response, then its last chunk twice more (3 occurrences in all)
    assert cf.tokens == (3, 4, DOT, 5, DOT, 5, DOT, 5, DOT)
    assert cf.copy_index == (0, 0, 0, 1, 1, 2, 2, 3, 3)
    assert cf.boundaries == (5, 7, 9) and cf.copies == 3
    # (b) EOS at the natural end, (c) EOS after 1 and 2 repeated copies
    assert eos_sequence(cf, 0, EOS) == (3, 4, DOT, 5, DOT, EOS)
    assert eos_sequence(cf, 1, EOS) == (3, 4, DOT, 5, DOT, 5, DOT, EOS)
    assert eos_sequence(cf, 2, EOS) == (3, 4, DOT, 5, DOT, 5, DOT, 5, DOT, EOS)
    with pytest.raises(OpdwatchError):
        eos_sequence(cf, 3, EOS)


@pytest.mark.parametrize("bad", [{"copies": 1}, {"mode": "paragraph"}, {"response": []}])
def test_bad_construction_inputs_are_refused(bad: dict) -> None:
    spec = ChunkSpec(mode=bad.get("mode", "window"))
    with pytest.raises(OpdwatchError):
        build_counterfactual([1], bad.get("response", [3, 4]), spec, bad.get("copies", 3))


def test_strip_stop_cuts_at_the_first_stop_id() -> None:
    assert strip_stop([3, 4, 7, 5, 1], {1, 7}) == (3, 4)
    assert strip_stop([3, 4], {1}) == (3, 4)


def _row(copy_index, teacher, student, teacher_eos, student_eos) -> RowScores:
    return RowScores(np.array(copy_index), np.array(teacher, float), np.array(student, float),
                     np.array(teacher_eos, float), np.array(student_eos, float))


def test_summary_by_hand() -> None:
    # regular advantage 0 and -1 (row means), loop tokens (copies 2, 3) +2 and +1
    rows = [_row([0, 0, 1, 2, 3], [-1, -1, -1, -0.5, -0.5], [-1, -1, -2, -2.5, -2.5], [-0.1, -3, -4], [-1, -1, -1]),
            _row([0, 1, 2], [-2, -1, -1], [-1, -1, -2], [-0.5, -2], [-0.5, -1])]
    s = summarize(rows)
    m = s.metrics
    assert m[LOOP_INCENTIVE] == pytest.approx(((2 + 1) / 2) - ((0 + -1) / 2))
    assert m[STUDENT_LOOP_LOGP] == pytest.approx((-2.5 + -2) / 2)
    assert m[EOS_ADV_NATURAL] == pytest.approx(((-0.1 + 1) + 0) / 2)
    assert m[EOS_ADV_REPEAT] == pytest.approx(((-2 + -3) / 2 + -1) / 2)
    assert [c["copy"] for c in s.per_copy] == [0, 1, 2, 3]
    assert s.per_copy[3]["advantage"] == pytest.approx(2.0) and s.per_copy[3]["tokens"] == 1
    assert [e["repeats"] for e in s.eos] == [0, 1, 2]
    assert s.eos[2]["advantage"] == pytest.approx(-3.0)
    delta = with_deltas(m, {**m, LOOP_INCENTIVE: m[LOOP_INCENTIVE] - 0.5})
    assert delta[LOOP_INCENTIVE + "_delta"] == pytest.approx(0.5)
    assert delta[EOS_ADV_NATURAL + "_delta"] == 0.0


def test_verdict_levels_and_reasons() -> None:
    th = RiskThresholds(incentive_high=1.0, incentive_low=0.3, eos_penalty=-0.5, teacher_loop_logp=-1.0)
    high = risk_verdict({LOOP_INCENTIVE: 2.0, EOS_ADV_REPEAT: -1.0}, th)
    assert high.risk == "high" and any("penalised" in r for r in high.reasons)
    assert risk_verdict({LOOP_INCENTIVE: 0.1, EOS_ADV_REPEAT: -1.0}, th).risk == "low"
    assert risk_verdict({LOOP_INCENTIVE: 0.6, EOS_ADV_REPEAT: -1.0}, th).risk == "medium"
    assert risk_verdict({LOOP_INCENTIVE: 2.0, EOS_ADV_REPEAT: 1.0, TEACHER_LOOP_LOGP: -0.5}, th).risk == "high"
    # an incentive with neither aggravating fact (stopping pays, the teacher does not continue loops): low
    assert risk_verdict({LOOP_INCENTIVE: 0.6, EOS_ADV_REPEAT: 0.0, TEACHER_LOOP_LOGP: -3.0}, th).risk == "low"
    assert risk_verdict({LOOP_INCENTIVE: 2.0, EOS_ADV_REPEAT: -0.2, TEACHER_LOOP_LOGP: -3.0}, th).risk == "medium"
    assert risk_verdict({LOOP_INCENTIVE: math.nan}, th).risk == "medium"


def test_the_probe_package_imports_without_torch() -> None:
    code = ("import sys; import opdwatch.probe, opdwatch.probe.scoring, opdwatch.probe.models, "
            "opdwatch.plots.probe; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_middle_prefix_cuts_at_the_sentence_end_nearest_the_middle() -> None:
    from opdwatch.probe.counterfactual import middle_prefix

    dot = 9
    # ends at 1, 4, 7 (index 10 is the last token and never a cut); middle of 11 tokens is 5 -> cut after 4
    resp = [1, dot, 2, 3, dot, 4, 5, dot, 6, 7, dot]
    assert middle_prefix(resp, {dot}) == (1, dot, 2, 3, dot)
    # a tie between two ends at equal distance goes to the earlier one
    assert middle_prefix([1, dot, 2, dot, 3], {dot}) == (1, dot)
    # no delimiter before the last token: half the length, at least one token
    assert middle_prefix([1, 2, 3, 4, 5], {dot}) == (1, 2)
    assert middle_prefix([5], {dot}) == (5,)
    with pytest.raises(OpdwatchError, match="empty"):
        middle_prefix([], {dot})
    # the cut response's loop repeats its own last sentence: a mid-solution loop
    spec = ChunkSpec(mode="sentence", delimiters=frozenset({dot}))
    cf = build_counterfactual([0], middle_prefix(resp, {dot}), spec, 3)
    assert cf.chunk == (2, 3, dot) and cf.tokens == (1, dot, 2, 3, dot, 2, 3, dot, 2, 3, dot)


def test_in_family_renames_only_probe_keys() -> None:
    from opdwatch.probe.summary import family_key, in_family

    assert in_family({LOOP_INCENTIVE: 1.0, "time/probe": 2.0}, "middle") == {
        "probe/middle/loop_incentive": 1.0, "time/probe": 2.0}
    assert family_key(LOOP_INCENTIVE, "middle") == "probe/middle/loop_incentive"
    assert family_key("time/probe", "middle") == "time/probe"
