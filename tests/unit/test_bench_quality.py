"""The quality benchmark can add rows to a result file without retraining the models already in it."""

from __future__ import annotations

import json

import pytest

from tokenrec.bench.quality import keep_earlier_rows

pytestmark = pytest.mark.unit

PROTOCOL = {"split": "leave_one_out", "ks": [20]}


def row(ndcg: float) -> dict:
    return {"valid": {"NDCG@20": ndcg}, "test": {"NDCG@20": ndcg}}


def earlier_file(tmp_path, results: dict):
    path = tmp_path / "quality-beauty.json"
    path.write_text(json.dumps({"command": "python -m old", "commit": "abc1234", "date": "2026-11-28 02:50 UTC",
                                "machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None}, "results": results}))
    return path


def test_rows_this_run_lacks_are_kept_with_where_they_were_measured(tmp_path):
    path = earlier_file(tmp_path, {"dataset": "beauty", "protocol": PROTOCOL, "lightgcn": row(0.04),
                                   "sasrec": row(0.06), "mf": row(0.02),
                                   "carried_over": {"mf": {"command": "older", "commit": "0000000", "date": "d"}}})
    document = {"dataset": "beauty", "protocol": PROTOCOL, "lightgcn": row(0.05), "tokenrec": row(0.07)}

    merged = keep_earlier_rows(document, path)

    assert merged["lightgcn"] == row(0.05)  # this run's row wins
    assert merged["tokenrec"] == row(0.07) and merged["sasrec"] == row(0.06) and merged["mf"] == row(0.02)
    assert merged["carried_over"]["sasrec"] == {"command": "python -m old", "commit": "abc1234",
                                                "date": "2026-11-28 02:50 UTC"}
    assert merged["carried_over"]["mf"]["commit"] == "0000000"  # provenance follows the row
    assert set(merged["carried_over"]) == {"sasrec", "mf"}


def test_kept_rows_are_shown_with_their_own_command(tmp_path, monkeypatch):
    from tokenrec.bench import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    document = {"dataset": "beauty", "protocol": PROTOCOL, "tokenrec": row(0.07)}
    merged = keep_earlier_rows(document, earlier_file(tmp_path, {**document, "sasrec": row(0.06)}))
    earlier_file(tmp_path, merged)

    page = report.render()

    assert "| sasrec | test |" in page
    assert "Row `sasrec` kept from an earlier run (`--keep-earlier`): measured 2026-11-28 02:50 UTC" in page


def test_rows_from_another_split_are_refused(tmp_path):
    path = earlier_file(tmp_path, {"dataset": "beauty", "protocol": {**PROTOCOL, "ks": [10]}, "sasrec": row(0.06)})
    with pytest.raises(SystemExit, match="field 'protocol'"):
        keep_earlier_rows({"dataset": "beauty", "protocol": PROTOCOL, "tokenrec": row(0.07)}, path)
    with pytest.raises(SystemExit, match="does not exist"):
        keep_earlier_rows({"dataset": "beauty", "protocol": PROTOCOL}, tmp_path / "missing.json")
