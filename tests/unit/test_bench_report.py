"""docs/BENCHMARKS.md is rendered from the result files: each kind gets its table, with where it was measured."""

from __future__ import annotations

import json

import pytest

from tokenrec.bench import report

pytestmark = pytest.mark.unit

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "gpu": None}


def metrics(hr: float, ndcg: float) -> dict[str, float]:
    return {"HR@20": hr, "NDCG@20": ndcg}


def write(
    folder,
    name: str,
    results: dict,
    date: str = "2026-11-27 23:00 UTC",
    commit: str = "abc1234",
    machine: dict | None = None,
) -> None:
    doc = {
        "command": f"python -m {name}",
        "commit": commit,
        "date": date,
        "machine": machine or MACHINE,
        "results": results,
    }
    (folder / f"{name}.json").write_text(json.dumps(doc))


def test_each_result_kind_is_rendered_with_its_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    split = {"valid": metrics(0.15, 0.06), "test": metrics(0.14, 0.059)}
    write(tmp_path, "quality-lastfm", {"dataset": "lastfm", "lightgcn": split, "protocol": {"ks": [20]}})
    write(
        tmp_path,
        "sweep-lightgcn-sampling-lastfm",
        {
            "dataset": "lastfm",
            "lightgcn": split,
            "protocol": {"ks": [20]},
            "overrides": ["gnn.sampling=user"],
        },
    )
    write(tmp_path, "probe-tokenrec-scoring-lastfm", {"dataset": "lastfm", "user_tokens": split})
    write(tmp_path, "speed-etl", {"rows": 5})
    write(
        tmp_path,
        "unseen-users-ml100k",
        {
            "dataset": "ml100k",
            "users": {"seen": 849, "unseen": 94},
            "protocol": {"held_out": "10%"},
            "lightgcn": {"seen": split, "unseen": split},
        },
    )

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
    old = {
        "name": "negatives-1",
        "overrides": ["llm.num_negatives=1"],
        "epochs": 1,
        "valid": metrics(0.25, 0.098),
        "test": metrics(0.18, 0.064),
        "samples_per_second": 3.5,
    }
    new = {
        **old,
        "name": "lr-2e-4",
        "overrides": ["llm.lr=2e-4"],
        "valid": metrics(0.27, 0.11),
        "gnn": {"run": "var/bench/ml100k/runs/gnn1", "valid": metrics(0.268, 0.1085)},
    }
    write(
        tmp_path,
        "sweep-tokenrec-ml100k",
        {
            "dataset": "ml100k",
            "note": "Selected on validation NDCG@20: lr-2e-4.",
            "notes": ["rows before the user-sampled LightGCN"],
            "runs": [old, new],
        },
    )

    page = report.render()

    assert "### TokenRec configurations tried: ml100k" in page
    assert "- rows before the user-sampled LightGCN" in page
    assert "| negatives-1 | `llm.num_negatives=1` | - | 1 | 0.2500 | 0.0980 | 0.1800 | 0.0640 | 3.5 |" in page
    assert "| lr-2e-4 | `llm.lr=2e-4` | gnn1 (0.1085) | 1 | 0.2700 | 0.1100 | 0.1800 | 0.0640 | 3.5 |" in page


PROTOCOL = {"ks": [20], "split": "leave_one_out"}


def split(hr: float, ndcg: float, valid_ndcg: float) -> dict:
    return {"valid": metrics(hr, valid_ndcg), "test": metrics(hr, ndcg)}


def link(
    value: str, stem: str, date: str, commit: str = "abc1234", machine: str = "AMD EPYC, 2 cores"
) -> str:
    return f'[{value}](benchmarks/{stem}.json "{date}, commit {commit}, {machine}")'


def summary_of(page: str) -> str:
    assert page.startswith(
        "# Benchmarks\n\n## Summary\n\n**Current** = per data set and model, the row with the latest"
    )
    return page.split("## All results")[0]


def test_the_summary_takes_each_models_latest_quality_row_and_links_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    old, new = "2026-11-27 23:00 UTC", "2026-12-01 10:00 UTC"
    write(
        tmp_path,
        "quality-ml100k",
        {
            "dataset": "ml100k",
            "protocol": PROTOCOL,
            "lightgcn": split(0.20, 0.09, 0.10),
            "tokenrec": split(0.29, 0.12, 0.14),
        },
        date=old,
        commit="1111111",
    )
    # newer: a LightGCN sweep (a quality file) wins for lightgcn only; a newer probe and unseen-users never count
    write(
        tmp_path,
        "sweep-lightgcn-sampling-ml100k",
        {"dataset": "ml100k", "protocol": PROTOCOL, "lightgcn": split(0.21, 0.095, 0.11)},
        date=new,
    )
    write(
        tmp_path,
        "probe-tokenrec-scoring-ml100k",
        {"dataset": "ml100k", "tokenrec": split(0.5, 0.5, 0.5)},
        date="2026-12-09 00:00 UTC",
    )
    write(
        tmp_path,
        "unseen-users-ml100k",
        {
            "dataset": "ml100k",
            "users": {"seen": 9, "unseen": 1},
            "protocol": {},
            "tokenrec": {"seen": split(0.6, 0.6, 0.6), "unseen": split(0.6, 0.6, 0.6)},
        },
        date="2026-12-09 00:00 UTC",
    )
    # a row kept with --keep-earlier counts with its own date: the tokenizer file between the two dates wins
    write(
        tmp_path,
        "quality-beauty",
        {
            "dataset": "beauty",
            "protocol": PROTOCOL,
            "lightgcn": split(0.06, 0.03, 0.04),
            "mostpop": split(0.02, 0.008, 0.01),
            "carried_over": {
                "lightgcn": {
                    "date": "2026-11-20 08:00 UTC",
                    "commit": "2222222",
                    "command": "python -m tokenrec.bench.quality",
                }
            },
        },
        date="2026-12-03 16:41 UTC",
        commit="3333333",
    )
    write(
        tmp_path,
        "tokenizer-beauty-l512",
        {"dataset": "beauty", "protocol": PROTOCOL, "lightgcn": split(0.07, 0.031, 0.045)},
        date=old,
    )
    # equal dates: quality-<data set> wins
    for stem, hr in (("quality-lastfm", 0.14), ("sweep-lightgcn-sampling-lastfm", 0.13)):
        write(
            tmp_path,
            stem,
            {"dataset": "lastfm", "protocol": PROTOCOL, "lightgcn": split(hr, 0.06, 0.064)},
            date=new,
        )

    # the TokenRec ablation's validation pick is a column of its own, with the cell's own date and commit
    cell = {"training": "causal", "loss": "hinge", "best_epoch": 5, "epochs": 8, "targets_per_epoch": 97401.0,
            "targets_per_second": 400.0, "scoring": {"ours": split(0.31, 0.13, 0.15), "paper": split(0.7, 0.7, 0.7)},
            "date": new, "commit": "4444444"}  # fmt: skip
    write(
        tmp_path,
        "ablation-tokenrec-ml100k",
        {"dataset": "ml100k", "selected_on_validation": "causal-hinge", "cells": {"causal-hinge": cell}},
        date="see each cell",
    )

    picks = report.current_quality(report._load(tmp_path))
    assert {ds: {m: p.stem for m, p in models.items()} for ds, models in picks.items()} == {
        "ml100k": {"lightgcn": "sweep-lightgcn-sampling-ml100k", "tokenrec": "quality-ml100k",
                   "tokenrec (causal-hinge)": "ablation-tokenrec-ml100k"},
        "beauty": {"lightgcn": "tokenizer-beauty-l512", "mostpop": "quality-beauty"},
        "lastfm": {"lightgcn": "quality-lastfm"},
    }
    top = summary_of(report.render())
    assert top.index("| **ml100k** |") < top.index("| **lastfm** |") < top.index("| **beauty** |")
    assert "| **ml100k** | lightgcn | tokenrec | tokenrec (causal-hinge) |" in top
    assert (
        f"| test HR@20 | {link('0.2100', 'sweep-lightgcn-sampling-ml100k', new)} | "
        f"{link('0.2900', 'quality-ml100k', old, '1111111')} | "
        f"**{link('0.3100', 'ablation-tokenrec-ml100k', new, '4444444')}** |"
    ) in top
    assert (
        f"| valid NDCG@20 (selection) | {link('0.1100', 'sweep-lightgcn-sampling-ml100k', new)} | "
        f"{link('0.1400', 'quality-ml100k', old, '1111111')} | "
        f"**{link('0.1500', 'ablation-tokenrec-ml100k', new, '4444444')}** |"
    ) in top
    assert (
        f"| measured | {link('2026-12-01 · sweep-lightgcn-sampling-ml100k', 'sweep-lightgcn-sampling-ml100k', new)} | "
        in top
    )
    assert f"| test NDCG@20 | **{link('0.0310', 'tokenizer-beauty-l512', old)}** | " in top
    assert link("0.0080", "quality-beauty", "2026-12-03 16:41 UTC", "3333333") in top
    assert f"| test HR@20 | {link('0.1400', 'quality-lastfm', new)} |" in top
    assert "0.5000" not in top and "0.6000" not in top  # probe and seen/unseen rows are not current results
    # the carried-over lightgcn row of quality-beauty lost to the newer tokenizer file
    assert "0.0600 |" not in top.split("| **beauty** |")[1]
    assert len(top.strip().splitlines()) <= 40


def test_the_summary_speed_table_links_the_latest_file_of_each_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    gpu = {**MACHINE, "cores": 16, "gpu": "NVIDIA H100"}
    write(
        tmp_path,
        "speed-make-test",
        {"fresh_clone_make_test_s": 770, "pytest_s": 763.8, "fresh_clone_install_s": 122},
    )
    write(
        tmp_path, "speed-make-run", {"make_run_s_after_install": 377, "dataset": "ml100k", "profile": "demo"}
    )
    write(tmp_path, "speed-etl", {"ml100k": {"etl_s": 20.8, "validate_s": 7.0}, "spark_startup_s": 5.1})
    training = {
        "backbone": "minilm",
        "batch": 32,
        "precision": "fp32",
        "samples_per_s": 14.17,
        "training": True,
    }
    write(tmp_path, "speed-llm-cpu", {"results": [{"users_per_s": 63.7, "prompt": "history"}, training]})
    # newer: the real trainer's targets/s replaces the synthetic hinge steps as the current CPU training figure
    write(
        tmp_path,
        "speed-llm-training-cpu",
        {
            "runs": [
                {"config": "sampled-hinge-fp32", "targets_per_second": 9.6},
                {"config": "causal-softmax-bf16", "targets_per_second": 120.4},
            ]
        },
        date="2026-12-04 10:00 UTC",
        commit="4444444",
    )
    write(
        tmp_path,
        "speed-inference",
        {
            "ml100k": {"local": {"users_per_s": 101.9}, "spark_local[2]": {"users_per_s": 33.5}},
            "synthetic": {"local": {"users_per_s": 3409.6}},
        },
    )
    scoring = [
        {"prompt": "history", "batch": 1024, "users_per_s": 41210.2},
        {"prompt": "history", "batch": 4096, "users_per_s": 42902.3},
    ]
    write(
        tmp_path,
        "speed-llm-gpu-old",
        {"results": [{"prompt": "history", "users_per_s": 6280.4}]},
        machine=gpu,
        date="2026-11-28 01:15 UTC",
    )
    write(
        tmp_path,
        "speed-llm-gpu",
        {"results": [*scoring, {**training, "samples_per_s": 8447.1, "batch": 256}]},
        machine=gpu,
        date="2026-11-28 01:21 UTC",
        commit="5555555",
    )
    write(
        tmp_path,
        "speed-lightgcn-1m-gpu",
        {
            "epochs": [{"wall_s": 2.19}, {"wall_s": 1.63}, {"wall_s": 1.68}],
            "graph": {"train_edges": 1000000, "users": 60000, "items": 25000},
        },
        machine=gpu,
    )

    top = summary_of(report.render())
    cpu, h100 = "AMD EPYC, 2 cores", "GPU NVIDIA H100"
    date = "2026-11-27 23:00 UTC"
    assert (
        f"| `make test` | {link('770 s (pytest 764 s; fresh clone, install 122 s before)', 'speed-make-test', date)} | {cpu} | 2026-11-27 `abc1234` |"
        in top
    )
    assert (
        f"| `make run`, after install | {link('377 s (ml100k, profile demo)', 'speed-make-run', date)} |"
        in top
    )
    assert f"| ETL | {link('ml100k 20.8 s + validate 7.0 s', 'speed-etl', date)} |" in top
    assert (
        f"| LLM training | {link('sampled-hinge-fp32 10, causal-softmax-bf16 120 targets/s', 'speed-llm-training-cpu', '2026-12-04 10:00 UTC', '4444444')}"
        f" | {cpu} | 2026-12-04 `4444444` |"
    ) in top
    assert (
        f"| batch inference | {link('ml100k 102 users/s (engine local, recommend and write)', 'speed-inference', date)} |"
        in top
    )
    gpu_date = "2026-11-28 01:21 UTC"
    assert (
        f"| GPU: LLM training | {link('8447.1 targets/s (minilm, fp32, batch 256; hinge steps, one target per prompt)', 'speed-llm-gpu', gpu_date, '5555555', h100)}"
        f" | {h100} | 2026-11-28 `5555555` |"
    ) in top
    assert (
        f"| GPU: LLM scoring | {link('history 42902 users/s (best batch per prompt)', 'speed-llm-gpu', gpu_date, '5555555', h100)} |"
        in top
    )
    assert (
        f"| GPU: LightGCN epoch | {link('1.68 s/epoch, median of 3 (1.00M edges, 60000 users, 25000 items)', 'speed-lightgcn-1m-gpu', date, machine=h100)} |"
        in top
    )
    assert "6280" not in top and "3410" not in top  # an older GPU file; a synthetic data set


def test_the_summary_sits_above_the_unchanged_notes_and_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "NOTES.md").write_text("## Notes on these measurements\n\n- session 1: as measured.\n")
    write(
        tmp_path,
        "quality-ml100k",
        {"dataset": "ml100k", "protocol": PROTOCOL, "mostpop": split(0.12, 0.05, 0.04)},
    )

    page = report.render()

    top, rest = page.split("## All results\n", 1)
    assert "| **ml100k** | mostpop |" in top and "## Notes" not in top
    assert rest.startswith("\nGenerated by `python -m tokenrec.bench.report` from `docs/benchmarks/*.json`")
    assert "## Notes on these measurements\n\n- session 1: as measured.\n\n### Quality: ml100k\n" in rest


def test_a_make_test_timing_from_an_installed_checkout_says_so():
    cell = report._make_test({"make_test_wall_s": 822, "pytest_s": 808.4})
    assert cell == "822 s (pytest 808 s; installed checkout)"
