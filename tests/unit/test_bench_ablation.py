"""The TokenRec ablation's grid, its result file and its table in docs/BENCHMARKS.md."""

from __future__ import annotations

import json

import pytest

from tokenrec.bench import ablation, report

pytestmark = pytest.mark.unit


def scored(valid_ndcg: float) -> dict[str, dict[str, float]]:
    return {"valid": {"HR@20": 0.3, "NDCG@20": valid_ndcg}, "test": {"HR@20": 0.25, "NDCG@20": 0.1}}


def row(training: str, loss: str, ours: float, paper: float, commit: str = "abc1234") -> dict:
    return {
        "training": training,
        "loss": loss,
        "scoring": {"ours": scored(ours), "paper": scored(paper)},
        "best_epoch": 2,
        "epochs": 5,
        "targets_per_epoch": 97401.0,
        "targets_per_second": 1000.0,
        "seconds": 600.0,
        "history": [],
        "commit": commit,
    }


def test_each_cell_sets_training_loss_and_prefixes_and_scores_both_ways() -> None:
    causal = ablation.cell_overrides("causal-softmax", 12)
    assert causal[:3] == ["llm.training=causal", "llm.loss=softmax", "llm.samples_per_user=0"]
    sampled = ablation.cell_overrides("sampled-hinge", 12)
    assert sampled[:3] == ["llm.training=sampled", "llm.loss=hinge", "llm.samples_per_user=12"]
    assert sampled[3] == "eval.baselines=[tokenrec, tokenrec_paper_scoring]"
    assert ablation.cell_overrides("causal-sampled_softmax", 4)[1] == "llm.loss=sampled_softmax"
    with pytest.raises(SystemExit, match="causal-softmax"):
        ablation.cell_overrides("causal-cosine", 12)


def test_a_run_replaces_its_cells_keeps_the_others_in_grid_order_and_selects_on_validation() -> None:
    earlier = ablation.merge(None, "ml100k", {"sampled-hinge": row("sampled", "hinge", 0.12, 0.10, "old")})
    merged = ablation.merge(earlier, "ml100k", {
        "causal-softmax": row("causal", "softmax", 0.14, 0.09),
        "sampled-hinge": row("sampled", "hinge", 0.15, 0.11, "new"),
    })  # fmt: skip
    assert list(merged["cells"]) == ["causal-softmax", "sampled-hinge"]
    assert merged["cells"]["sampled-hinge"]["commit"] == "new"
    assert merged["selected_on_validation"] == "sampled-hinge"  # best validation NDCG@20 of either scoring
    with pytest.raises(SystemExit, match="lastfm"):
        ablation.merge(merged, "lastfm", {})


def test_the_ablation_table_has_a_line_per_cell_and_scoring(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    results = ablation.merge(None, "ml100k", {"causal-softmax": row("causal", "softmax", 0.1377, 0.0871)})
    doc = {"command": "see each cell's command", "commit": "abc1234", "date": "2026-12-07 22:00 UTC",
           "machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None}, "results": results}  # fmt: skip
    (tmp_path / "ablation-tokenrec-ml100k.json").write_text(json.dumps(doc))
    page = report.render()
    assert "### TokenRec ablation, sampling x loss x scoring: ml100k" in page
    assert (
        "| causal | softmax | ours | 0.3000 | 0.1377 | 0.2500 | 0.1000 | 2 / 5 | 97,401 | 1,000 | abc1234 |"
        in page
    )
    assert "| causal | softmax | paper | 0.3000 | 0.0871 |" in page
    summary = page.split("## All results")[0]  # the validation pick is a column of the summary, scored ours
    assert "| **ml100k** | tokenrec (causal-softmax) |" in summary
    assert "[0.1000](benchmarks/ablation-tokenrec-ml100k.json" in summary and "0.0871" not in summary


def test_a_cell_the_quality_run_trained_is_read_from_it_not_trained_again(tmp_path) -> None:
    from tokenrec.config import load_config, save_config
    from tokenrec.run_folder import LLM, RunFolder
    from tokenrec.storage import atomic_write_json

    run = RunFolder(tmp_path / "quality")
    profile = load_config(overrides=ablation.cell_overrides("causal-softmax", 12)[:3])  # what the run trained
    save_config(profile, run.llm)
    atomic_write_json(run.history(LLM), [{"epoch": 1, "seconds": 60.0}])
    atomic_write_json(run.eval_metrics, {m: scored(0.1) for m in ablation.SCORINGS.values()})
    cell = load_config(overrides=ablation.cell_overrides("causal-softmax", 12))
    assert ablation.trained_by(run, cell)
    assert not ablation.trained_by(run, load_config(overrides=ablation.cell_overrides("causal-hinge", 12)[:3]))
    atomic_write_json(run.eval_metrics, {"tokenrec": scored(0.1)})  # scored one way only: train the cell
    assert not ablation.trained_by(run, cell)
