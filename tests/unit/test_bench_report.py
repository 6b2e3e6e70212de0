"""docs/BENCHMARKS.md is rendered from the result files: each kind gets its table, with where it was measured."""

from __future__ import annotations

import json

import pytest

from tokenrec.bench import report

pytestmark = pytest.mark.unit

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "gpu": None}


def metrics(hr: float, ndcg: float) -> dict[str, float]:
    return {"HR@20": hr, "NDCG@20": ndcg}


def write(folder, name: str, results: dict) -> None:
    doc = {"command": f"python -m {name}", "commit": "abc1234", "date": "2026-11-27 23:00 UTC",
           "machine": MACHINE, "results": results}
    (folder / f"{name}.json").write_text(json.dumps(doc))


def test_each_result_kind_is_rendered_with_its_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    split = {"valid": metrics(0.15, 0.06), "test": metrics(0.14, 0.059)}
    write(tmp_path, "quality-lastfm", {"dataset": "lastfm", "lightgcn": split, "protocol": {"ks": [20]}})
    write(tmp_path, "sweep-lightgcn-sampling-lastfm",
          {"dataset": "lastfm", "lightgcn": split, "protocol": {"ks": [20]}, "overrides": ["gnn.sampling=user"]})
    write(tmp_path, "probe-tokenrec-scoring-lastfm", {"dataset": "lastfm", "user_tokens": split})
    write(tmp_path, "speed-etl", {"rows": 5})
    write(tmp_path, "unseen-users-ml100k", {"dataset": "ml100k", "users": {"seen": 849, "unseen": 94},
                                            "protocol": {"held_out": "10%"}, "lightgcn": {"seen": split, "unseen": split}})

    page = report.render()

    assert "### Quality: lastfm\n" in page
    assert "### Quality: lastfm (sweep-lightgcn-sampling-lastfm)" in page and "`gnn.sampling=user`" in page
    assert "| lightgcn | test | nan | nan | 0.1400 | 0.0590 | nan | nan |" in page
    assert "| TokenRec as reported by the paper (its protocol) | test |" in page
    assert "| user_tokens | 0.1500 | 0.0600 | 0.1400 | 0.0590 |" in page
    assert "### speed-etl" in page and '"rows": 5' in page
    assert "| lightgcn | unseen | 0.1500 | 0.0600 | 0.1400 | 0.0590 |" in page
    assert page.count("at commit `abc1234` on AMD EPYC, 2 cores, no GPU") == 5


def test_sweep_rows_name_the_lightgcn_run_they_were_trained_on(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    old = {"name": "negatives-1", "overrides": ["llm.num_negatives=1"], "epochs": 1,
           "valid": metrics(0.25, 0.098), "test": metrics(0.18, 0.064), "samples_per_second": 3.5}
    new = {**old, "name": "lr-2e-4", "overrides": ["llm.lr=2e-4"], "valid": metrics(0.27, 0.11),
           "gnn": {"run": "var/bench/ml100k/runs/gnn1", "valid": metrics(0.268, 0.1085)}}
    write(tmp_path, "sweep-tokenrec-ml100k", {"dataset": "ml100k", "note": "Selected on validation NDCG@20: lr-2e-4.",
                                              "notes": ["rows before the user-sampled LightGCN"], "runs": [old, new]})

    page = report.render()

    assert "### TokenRec configurations tried: ml100k" in page
    assert "- rows before the user-sampled LightGCN" in page
    assert "| negatives-1 | `llm.num_negatives=1` | - | 1 | 0.2500 | 0.0980 | 0.1800 | 0.0640 | 3.5 |" in page
    assert "| lr-2e-4 | `llm.lr=2e-4` | gnn1 (0.1085) | 1 | 0.2700 | 0.1100 | 0.1800 | 0.0640 | 3.5 |" in page
