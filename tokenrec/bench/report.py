"""Render docs/BENCHMARKS.md from the result files in docs/benchmarks/ (``python -m tokenrec.bench.report``).

The page quotes only what the JSON files hold, each with its command, commit, machine and date, so a number in
the docs always says how it was measured. It opens with a one-screen summary (:func:`summary`): per data set the
current test HR@20, NDCG@20 and validation NDCG@20 of every model, and the current speed figures, each number
linked to the file it comes from; the full sections follow.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from tokenrec.bench.machine import REPO, RESULTS

PAGE = REPO / "docs" / "BENCHMARKS.md"
PAPER = {  # TokenRec's own reported numbers (PAPER.md section 3), for the comparison rows
    "lastfm": {"HR@10": 0.0532, "HR@20": 0.0936, "NDCG@10": 0.0247, "NDCG@20": 0.0348},
    "beauty": {"HR@10": 0.0407, "HR@20": 0.0615, "NDCG@10": 0.0222, "NDCG@20": 0.0276},
}
METRICS = ["HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@30", "NDCG@30"]


def _provenance(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    where = f"{m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
    return f"Measured {doc['date']} at commit `{doc['commit']}` on {where}. Command: `{doc['command']}`"


def _quality(doc: dict[str, Any], stem: str) -> list[str]:
    res = doc["results"]
    dataset = res.get("dataset", "?")
    title = f"Quality: {dataset}" + ("" if stem == f"quality-{dataset}" else f" ({stem})")
    lines = _heading(title, doc)
    if res.get("overrides"):
        lines += ["Overrides: `" + " ".join(res["overrides"]) + "`", ""]
    lines.append("| model | split | " + " | ".join(METRICS) + " |")
    lines.append("|---|---|" + "---|" * len(METRICS))
    for name, value in res.items():
        if isinstance(value, dict) and "test" in value and "valid" in value:
            for split in ("valid", "test"):
                row = " | ".join(f"{value[split].get(k, float('nan')):.4f}" for k in METRICS)
                lines.append(f"| {name} | {split} | {row} |")
    if dataset in PAPER:
        row = " | ".join(f"{PAPER[dataset][k]:.4f}" if k in PAPER[dataset] else "-" for k in METRICS)
        lines.append(f"| TokenRec as reported by the paper (its protocol) | test | {row} |")
    for name, where in res.get("carried_over", {}).items():
        lines += [
            "",
            f"Row `{name}` kept from an earlier run (`--keep-earlier`): measured {where['date']} at commit "
            f"`{where['commit']}`, command `{where['command']}`.",
        ]
    protocol = res.get("protocol")
    if protocol:
        lines += ["", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in protocol.items()) + "."]
    seeds = res.get("lightgcn_training", {}).get("seeds", [])
    if len(seeds) > 1:
        lines += ["", "LightGCN seeds (the one best on validation NDCG@20 is the `lightgcn` row):", ""]
        lines += ["| seed | best epoch | valid HR@20 | valid NDCG@20 |", "|---|---|---|---|"]
        lines += [
            f"| {s['seed']} | {s['best_epoch']} | {s['valid']['HR@20']:.4f} | {s['valid']['NDCG@20']:.4f} |"
            for s in seeds
        ]
    stats = res.get("tokenizer_stats")
    if stats:
        lines += ["", "Tokenizer statistics:", "", _TOKENIZER_HEADER, "|---|---|---|---|---|---|---|"]
        lines += [_tokenizer_row(kind, stats[kind]) for kind in ("user", "item") if kind in stats]
    extra = {k: v for k, v in res.items() if k in ("lightgcn_training", "seconds")}
    if extra:
        extra["lightgcn_training"] = {
            k: v for k, v in extra.get("lightgcn_training", {}).items() if k != "seeds"
        }
        lines += ["", "Training: `" + json.dumps(extra) + "`"]
    return lines + [""]


_TOKENIZER_HEADER = (
    "| entities | kind, K x L | codes used per level | perplexity per level | recon MSE | "
    "sharing a K-tuple | largest group |"
)


def _tokenizer_row(entity: str, st: dict[str, Any]) -> str:
    used = "/".join(str(u) for u in st["used_codes"])
    perplexity = "/".join(f"{x:.0f}" for x in st["perplexity"])
    return (
        f"| {st['entities']} {entity}s | {st['kind']}, {st['levels']} x {st['codebook_size']} | {used} | "
        f"{perplexity} | {st['recon_mse']:.4f} | {st['colliding_entities']} ({st['collision_rate']:.1%}) | "
        f"{st['max_bucket']} |"
    )


def _heading(title: str, doc: dict[str, Any]) -> list[str]:
    """A result section's title and the line saying where and how it was measured."""
    return [f"### {title}", "", _provenance(doc), ""]


def _split_cells(m: dict[str, dict[str, float]]) -> str:
    """``valid HR@20 | valid NDCG@20 | test HR@20 | test NDCG@20`` table cells of one metrics entry."""
    return " | ".join(f"{m[split][k]:.4f}" for split in ("valid", "test") for k in ("HR@20", "NDCG@20"))


def _unseen(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    errors = res.get("standard_error_hr20", {})
    lines = _heading(f"Seen vs unseen users: {res.get('dataset', '?')}", doc)
    lines += [
        f"Users: {res['users']}; protocol: " + "; ".join(f"{k}: {v}" for k, v in res["protocol"].items())
    ]
    lines += [
        "",
        "| model | users | valid HR@20 | valid NDCG@20 | test HR@20 | test NDCG@20 | s.e. of test HR@20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, groups in res.items():
        seen = groups.get("seen") if isinstance(groups, dict) else None
        if name == "standard_error_hr20" or not (
            isinstance(seen, dict) and isinstance(seen.get("valid"), dict)
        ):
            continue  # user and target counts, errors, fold-in statistics
        for group, m in groups.items():
            error = errors.get(name, {}).get(group, {}).get("test")
            lines.append(
                f"| {name} | {group} | {_split_cells(m)} | {'-' if error is None else f'{error:.4f}'} |"
            )
    return lines + [""]


def _sweep(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    lines = _heading(f"TokenRec configurations tried: {res.get('dataset', '?')}", doc)
    lines += [res.get("note", ""), ""] + [f"- {note}" for note in res.get("notes", [])] + [""]
    lines += [
        "| config | overrides | LightGCN run (valid NDCG@20) | epochs | valid HR@20 | valid NDCG@20 | "
        "test HR@20 | test NDCG@20 | train samples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in res["runs"]:
        v, t = run["valid"], run.get("test", {})
        gnn = run.get("gnn", {})
        gnn_cell = (
            f"{Path(gnn['run']).name} ({gnn.get('valid', {}).get('NDCG@20', float('nan')):.4f})"
            if gnn
            else "-"
        )
        lines.append(
            f"| {run['name']} | `{' '.join(run['overrides'])}` | {gnn_cell} | {run.get('epochs', '-')} | "
            f"{v['HR@20']:.4f} | {v['NDCG@20']:.4f} | {t.get('HR@20', float('nan')):.4f} | "
            f"{t.get('NDCG@20', float('nan')):.4f} | {run.get('samples_per_second', float('nan')):.1f} |"
        )
    return lines + [""]


def _ablation(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    header = (
        "| training | loss | scoring | valid HR@20 | valid NDCG@20 | test HR@20 | test NDCG@20 | best epoch / epochs "
        "| targets per epoch | targets/s | commit |"
    )
    selected = f"Selected on validation NDCG@20: {res.get('selected_on_validation')}."
    lines = [*_heading(f"TokenRec ablation, sampling x loss x scoring: {res.get('dataset', '?')}", doc),
             res.get("note", ""), "", selected, "", header, "|---" * 11 + "|"]  # fmt: skip
    for cell in res["cells"].values():
        for scoring, m in cell["scoring"].items():
            lines.append(
                f"| {cell['training']} | {cell['loss']} | {scoring} | {_split_cells(m)} | {cell['best_epoch']} / "
                f"{cell['epochs']} | {cell['targets_per_epoch']:,.0f} | {cell['targets_per_second']:,.0f} | "
                f"{cell['commit']} |"
            )
    return lines + [""]


def _probe(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    run = f" ({Path(res['run_dir']).name})" if res.get("run_dir") else ""
    lines = _heading(f"Scoring probe of a trained TokenRec run: {res.get('dataset', '?')}{run}", doc)
    lines += [
        "Diagnostic (tokenrec/bench/scoring_probe.py): one run's vectors scored several ways, nothing retrained.",
        "",
    ]
    lines += [
        "| scoring | valid HR@20 | valid NDCG@20 | test HR@20 | test NDCG@20 |",
        "|---|---|---|---|---|",
    ]
    for name, m in res.items():
        if isinstance(m, dict) and "valid" in m:
            lines.append(f"| {name} | {_split_cells(m)} |")
    return lines + [""]


def _validation_trajectory(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    lines = _heading(f"TokenRec trained longer, validation only: {res.get('dataset', '?')}", doc)
    lines += [res["what"] + ".", "", "Settings: `" + json.dumps(res["settings"]) + "`", ""]
    lines += ["| epoch | train samples/s | valid HR@20 | valid NDCG@20 |", "|---|---|---|---|"]
    for h in res["validation_per_epoch"]:
        lines.append(
            f"| {h['epoch']} | {h['samples_per_second']:.0f} | {h['valid']['HR@20']:.4f} | {h['valid']['NDCG@20']:.4f} |"
        )
    refs = res.get("reference_validation_same_split", {})
    for name, m in refs.items():
        if isinstance(m, dict):
            lines.append(f"| {name} (reference) | - | {m['HR@20']:.4f} | {m['NDCG@20']:.4f} |")
    if refs.get("source"):
        lines += ["", f"References: {refs['source']}."]
    if res.get("test") is None:
        lines += ["", f"Test: not measured ({res.get('test_not_measured', 'see the file')})."]
    return lines + [""]


def _generic(name: str, doc: dict[str, Any]) -> list[str]:
    return [*_heading(name, doc), "```json", json.dumps(doc["results"], indent=2), "```", ""]


def _kind(stem: str, doc: dict[str, Any]) -> str:
    """Which section renders a result file: unseen, sweep, ablation, probe, trajectory, quality or generic."""
    if stem.startswith("unseen-users-"):
        return "unseen"
    if stem.startswith("sweep-tokenrec-"):
        return "sweep"
    if stem.startswith("ablation-tokenrec-"):
        return "ablation"
    if stem.startswith("probe-tokenrec-scoring-"):
        return "probe"
    if "validation_per_epoch" in doc["results"]:
        return "trajectory"
    if stem.startswith("quality-") or "protocol" in doc["results"]:
        return "quality"
    return "generic"


# --------------------------------------------------------------------------------------------------- summary

DATASETS = ("ml100k", "lastfm", "beauty")
SUMMARY_ROWS = (("test", "HR@20", "test HR@20"), ("test", "NDCG@20", "test NDCG@20"),
                ("valid", "NDCG@20", "valid NDCG@20 (selection)"))  # fmt: skip
CURRENT = (
    "**Current** = per data set and model, the row with the latest recorded `date` among the quality files "
    "(written by `tokenrec.bench.quality`: `quality-*.json` and the other files with a `protocol`, the "
    "*Quality* sections below); a row kept with `--keep-earlier` counts with its own date and commit; on equal "
    "dates `quality-<data set>.json` wins. `tokenrec (<cell>)` is the TokenRec ablation's validation pick, "
    "trained on that data set's quality-run LightGCN and tokenizers (*TokenRec ablation* below). Speed: the "
    "latest file of each kind. Every number links to its file (hover: date, commit, machine)."
)


class Pick(NamedTuple):
    """The current result of one model on one data set: where it comes from and its metrics."""

    date: str
    canonical: bool  # the file is quality-<dataset>.json (wins ties)
    stem: str
    commit: str
    machine: str
    metrics: dict[str, dict[str, float]]


def _machine_short(machine: Any) -> str:
    if not isinstance(machine, dict):
        return "machine not recorded"
    if machine.get("gpu"):
        return f"GPU {machine['gpu']}"
    return f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"


def _link(text: str, stem: str, date: str, commit: str, machine: str) -> str:
    title = f"{date or 'date not recorded'}, commit {commit or '?'}, {machine}".replace('"', "'")
    return f'[{text}](benchmarks/{stem}.json "{title}")'


def current_quality(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Pick]]:
    """Per data set and model, the current quality row (see :data:`CURRENT`)."""
    picks: dict[str, dict[str, Pick]] = {}
    for stem, doc in docs:
        res = doc.get("results")
        if isinstance(res, dict) and _kind(stem, doc) == "ablation" and res.get("selected_on_validation"):
            cell = res["cells"][res["selected_on_validation"]]
            picks.setdefault(str(res["dataset"]), {})[f"tokenrec ({res['selected_on_validation']})"] = Pick(
                str(cell.get("date", "")), False, stem, str(cell.get("commit", "")),
                _machine_short(doc.get("machine")), cell["scoring"]["ours"],
            )  # fmt: skip
            continue
        if not isinstance(res, dict) or _kind(stem, doc) != "quality" or not res.get("dataset"):
            continue
        dataset = str(res["dataset"])
        carried = res.get("carried_over") if isinstance(res.get("carried_over"), dict) else {}
        for model, value in res.items():
            if not (isinstance(value, dict) and isinstance(value.get("test"), dict)
                    and isinstance(value.get("valid"), dict)):  # fmt: skip
                continue
            where = carried.get(model) if isinstance(carried.get(model), dict) else doc
            pick = Pick(str(where.get("date", "")), stem == f"quality-{dataset}", stem,
                        str(where.get("commit", "")), _machine_short(doc.get("machine")), value)  # fmt: skip
            best = picks.setdefault(dataset, {}).get(model)
            if best is None or pick[:3] > best[:3]:
                picks[dataset][model] = pick
    return picks


def _quality_table(dataset: str, picks: dict[str, Pick]) -> list[str]:
    models = sorted(picks)
    lines = [f"| **{dataset}** | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for split, metric, label in SUMMARY_ROWS:
        values = {m: picks[m].metrics[split].get(metric) for m in models}
        top = max(
            (v for v in values.values() if isinstance(v, int | float) and v == v), default=None
        )  # not NaN
        cells = []
        for m in models:
            p, v = picks[m], values[m]
            if not isinstance(v, int | float):
                cells.append("-")
                continue
            cell = _link(f"{v:.4f}", p.stem, p.date, p.commit, p.machine)
            cells.append(f"**{cell}**" if v == top and len(models) > 1 else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    measured = []
    for m in models:
        p = picks[m]
        text = (p.date[:10] or "no date") + ("" if p.canonical else f" · {p.stem}")
        measured.append(_link(text, p.stem, p.date, p.commit, p.machine))
    lines.append("| measured | " + " | ".join(measured) + " |")
    return lines


def _latest(docs: list[tuple[str, dict[str, Any]]], test: Callable[[dict[str, Any]], bool],
            gpu: bool | None = None) -> tuple[str, dict[str, Any]] | None:  # fmt: skip
    """The latest-dated file whose ``results`` pass ``test`` (on a GPU machine, or not, when ``gpu`` is set)."""
    found = []
    for stem, doc in docs:
        machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
        if gpu is not None and bool(machine.get("gpu")) != gpu:
            continue
        try:
            ok = test(doc["results"])
        except (KeyError, TypeError, AttributeError, IndexError):
            ok = False
        if ok:
            found.append((str(doc.get("date", "")), stem, doc))
    if not found:
        return None
    _, stem, doc = max(found, key=lambda f: (f[0], f[1]))
    return stem, doc


def _entries(res: dict[str, Any], key: str) -> list[dict[str, Any]]:
    rows = res.get(key)
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _training_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in _entries(res, "results") if r.get("training") and "samples_per_s" in r]


def _llm_training(res: dict[str, Any]) -> str:
    runs = [r for r in _entries(res, "runs") if "targets_per_second" in r]
    if runs:  # tokenrec.bench.llm_training_speed: the real trainer, one epoch per configuration
        return ", ".join(f"{r.get('config', '?')} {r['targets_per_second']:.0f}" for r in runs) + " targets/s"
    r = _training_rows(res)[0]  # tokenrec.bench.llm_speed: hinge steps, one target per prompt
    return (f"{r['samples_per_s']:.1f} targets/s ({Path(str(r.get('backbone', '?'))).name}, "
            f"{r.get('precision', '?')}, batch {r.get('batch', '?')}; hinge steps, one target per prompt)")  # fmt: skip


def _etl(res: dict[str, Any]) -> str:
    cells = [f"{ds} {v['etl_s']:.1f} s + validate {v.get('validate_s', float('nan')):.1f} s"
             for ds, v in _ordered(res) if isinstance(v, dict) and "etl_s" in v]  # fmt: skip
    return ", ".join(cells)


def _inference(res: dict[str, Any]) -> str:
    cells = []
    for ds, engines in _ordered(res):
        if ds not in DATASETS or not isinstance(engines, dict):
            continue
        local = engines.get("local")
        if isinstance(local, dict) and "users_per_s" in local:
            cells.append(f"{ds} {local['users_per_s']:.0f}")
    return ", ".join(cells) + " users/s (engine local, recommend and write)"


def _scoring(res: dict[str, Any]) -> str:
    best: dict[str, float] = {}  # prompt family -> the best users/s over the batch sizes tried
    for r in _entries(res, "results"):
        if "users_per_s" in r:
            prompt = str(r.get("prompt", "?"))
            best[prompt] = max(best.get(prompt, 0.0), float(r["users_per_s"]))
    return ", ".join(f"{p} {v:.0f}" for p, v in best.items()) + " users/s (best batch per prompt)"


def _gnn_epoch(res: dict[str, Any]) -> str:
    wall = statistics.median(e["wall_s"] for e in res["epochs"])
    g = res["graph"]
    return (
        f"{wall:.2f} s/epoch, median of {len(res['epochs'])} ({g['train_edges'] / 1e6:.2f}M edges, {g['users']} "
        f"users, {g['items']} items)"
    )


def _ordered(res: dict[str, Any]) -> list[tuple[str, Any]]:
    rank = {ds: i for i, ds in enumerate(DATASETS)}
    return sorted(res.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _has_training(res: dict[str, Any]) -> bool:
    return bool(_training_rows(res) or [r for r in _entries(res, "runs") if "targets_per_second" in r])


def _has_local_inference(res: dict[str, Any]) -> bool:
    return any(isinstance(res.get(ds), dict) and isinstance(res[ds].get("local"), dict)
               and "users_per_s" in res[ds]["local"] for ds in DATASETS)  # fmt: skip


def _make_test(res: dict[str, Any]) -> str:
    fresh = "fresh_clone_make_test_s" in res
    wall = res["fresh_clone_make_test_s"] if fresh else res["make_test_wall_s"]
    where = (
        f"fresh clone, install {res.get('fresh_clone_install_s', '?')} s before"
        if fresh
        else "installed checkout"
    )
    return f"{wall:.0f} s (pytest {res.get('pytest_s', float('nan')):.0f} s; {where})"


def _make_run(res: dict[str, Any]) -> str:
    return f"{res['make_run_s_after_install']:.0f} s ({res.get('dataset', '?')}, profile {res.get('profile', '?')})"


# (label, which results qualify, the cell, GPU machine: True / False / None = either); the latest file qualifying
SPEED: list[tuple[str, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], str], bool | None]] = [
    ("`make test`", lambda r: "fresh_clone_make_test_s" in r or "make_test_wall_s" in r, _make_test, None),
    ("`make run`, after install", lambda r: "make_run_s_after_install" in r, _make_run, None),
    ("ETL", lambda r: any(isinstance(v, dict) and "etl_s" in v for v in r.values()), _etl, None),
    ("LLM training", _has_training, _llm_training, False),
    ("batch inference", _has_local_inference, _inference, False),
    ("GPU: LLM training", _has_training, _llm_training, True),
    ("GPU: LLM scoring", lambda r: any("users_per_s" in x for x in _entries(r, "results")), _scoring, True),
    (
        "GPU: LightGCN epoch",
        lambda r: bool(r["epochs"][0]["wall_s"] and r["graph"]["train_edges"]),
        _gnn_epoch,
        True,
    ),
]


def _speed_table(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| speed | current | machine | measured |", "|---|---|---|---|"]
    for label, test, value, gpu in SPEED:
        found = _latest(docs, test, gpu)
        if found is None:
            continue
        stem, doc = found
        date, commit = str(doc.get("date", "")), str(doc.get("commit", ""))
        machine = _machine_short(doc.get("machine"))
        try:
            text = value(doc["results"])
        except (KeyError, TypeError, ValueError, IndexError, statistics.StatisticsError):
            continue
        lines.append(f"| {label} | {_link(text, stem, date, commit, machine)} | {machine} | "
                     f"{date[:10] or 'no date'} `{commit or '?'}` |")  # fmt: skip
    return lines if len(lines) > 2 else []


def summary(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The one-screen summary at the top of the page: current quality per data set, then speed."""
    out = ["## Summary", "", CURRENT, ""]
    picks = current_quality(docs)
    rank = {ds: i for i, ds in enumerate(DATASETS)}
    for dataset in sorted(picks, key=lambda ds: (rank.get(ds, len(rank)), ds)):
        out += [*_quality_table(dataset, picks[dataset]), ""]
    if picks:
        out += ["Not in these tables: configuration sweeps, scoring probes, seen/unseen users and "
                "validation-only runs (sections below).", ""]  # fmt: skip
    speed = _speed_table(docs)
    if speed:
        out += [*speed, ""]
    return out


def _load(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(path.stem, json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]


def render() -> str:
    docs = _load(RESULTS)
    out = ["# Benchmarks", "", *summary(docs)]
    out += [
        "## All results",
        "",
        "Generated by `python -m tokenrec.bench.report` from `docs/benchmarks/*.json`; every number below was",
        "measured by the command shown with it. Timings on this 2-core CPU vary with load: a result taken while",
        "other jobs ran says so in its notes.",
        "",
    ]
    notes = RESULTS / "NOTES.md"
    if notes.is_file():
        out += [notes.read_text().strip(), ""]
    sections = {"unseen": _unseen, "sweep": _sweep, "ablation": _ablation, "probe": _probe,
                "trajectory": _validation_trajectory}  # fmt: skip
    for stem, doc in docs:
        kind = _kind(stem, doc)
        if kind == "quality":
            out += _quality(doc, stem)
        elif kind == "generic":
            out += _generic(stem, doc)
        else:
            out += sections[kind](doc)
    return "\n".join(out) + "\n"


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
