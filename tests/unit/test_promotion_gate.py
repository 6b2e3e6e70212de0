"""The promotion gate as a table: required = champion + max(abs_margin, rel_margin * |champion|), per metric.

Pure function, no MLflow. Decisions pinned here:
- every gated metric must clear its required value (>=, so equal metrics with zero margins pass);
- a metric missing on the challenger fails, and so does one missing on the champion: without both numbers
  there is no evidence of an improvement (re-evaluate the champion or drop the metric from the gate);
- NaN on either side fails; an empty list of gated metrics fails.
"""

from __future__ import annotations

import math

import pytest

from tokenrec.mlops.registry import Decision, gate_decision

pytestmark = pytest.mark.unit

GATED = ["valid.NDCG@20", "valid.HR@20"]
CHAMPION = {"valid.NDCG@20": 0.100, "valid.HR@20": 0.200}


def metrics(ndcg: float | None, hr: float | None) -> dict[str, float]:
    return {k: v for k, v in zip(GATED, (ndcg, hr), strict=True) if v is not None}


CASES = [
    # (case, challenger, champion, abs_margin, rel_margin, passed, text in the failing/passing reason)
    ("equal metrics, zero margins", metrics(0.100, 0.200), CHAMPION, 0.0, 0.0, True, ">= required 0.1"),
    ("both better", metrics(0.110, 0.210), CHAMPION, 0.0, 0.0, True, "valid.HR@20: 0.21 >= required 0.2"),
    (
        "one metric worse",
        metrics(0.120, 0.199),
        CHAMPION,
        0.0,
        0.0,
        False,
        "valid.HR@20: 0.199 < required 0.2",
    ),
    # abs 0.005 vs rel 1 % of 0.1 = 0.001: abs dominates for NDCG -> required 0.105
    ("abs margin dominates: fails", metrics(0.104, 0.300), CHAMPION, 0.005, 0.01, False, "< required 0.105"),
    ("abs margin dominates: passes", metrics(0.105, 0.300), CHAMPION, 0.005, 0.01, True, ">= required 0.105"),
    # rel 10 % of 0.2 = 0.02 vs abs 0.001: rel dominates for HR -> required 0.22
    ("rel margin dominates: fails", metrics(0.200, 0.219), CHAMPION, 0.001, 0.10, False, "< required 0.22"),
    ("rel margin dominates: passes", metrics(0.200, 0.221), CHAMPION, 0.001, 0.10, True, ">= required 0.22"),
    (
        "missing on challenger",
        metrics(0.300, None),
        CHAMPION,
        0.0,
        0.0,
        False,
        "HR@20: missing on the challenger",
    ),
    (
        "missing on champion",
        metrics(0.3, 0.3),
        metrics(0.1, None),
        0.0,
        0.0,
        False,
        "missing on the champion",
    ),
    ("NaN on challenger", metrics(math.nan, 0.3), CHAMPION, 0.0, 0.0, False, "valid.NDCG@20: NaN"),
    ("NaN on champion", metrics(0.3, 0.3), metrics(0.1, math.nan), 0.0, 0.0, False, "valid.HR@20: NaN"),
]


@pytest.mark.parametrize(
    ("challenger", "champion", "abs_margin", "rel_margin", "passed", "text"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_gate_table(challenger, champion, abs_margin, rel_margin, passed, text) -> None:
    decision = gate_decision(challenger, champion, GATED, abs_margin, rel_margin)
    assert isinstance(decision, Decision)
    assert decision.passed is passed
    assert text in decision.reason
    assert len(decision.reasons) == len(GATED)  # one line per gated metric, pass or fail


def test_failure_of_one_metric_is_not_hidden_by_the_other() -> None:
    decision = gate_decision(metrics(0.5, 0.1), CHAMPION, GATED, 0.0, 0.0)
    assert not decision.passed
    assert decision.reasons[0].startswith("valid.NDCG@20: 0.5 >=") and "<" in decision.reasons[1]


def test_only_gated_metrics_count() -> None:
    challenger = {**metrics(0.1, 0.2), "test.NDCG@20": 0.0}  # a worse test metric is not gated
    assert gate_decision(challenger, {**CHAMPION, "test.NDCG@20": 0.9}, GATED, 0.0, 0.0).passed


def test_no_gated_metrics_fails() -> None:
    decision = gate_decision(metrics(0.2, 0.3), CHAMPION, [], 0.0, 0.0)
    assert not decision.passed and decision.reason == "no gated metrics configured"


def test_relative_margin_uses_the_magnitude_of_the_champion() -> None:
    # a negative champion value (e.g. a negated loss) must not make the requirement easier than abs_margin
    decision = gate_decision({"m": -0.95}, {"m": -1.0}, ["m"], 0.0, 0.10)
    assert not decision.passed and "required -0.9" in decision.reason
