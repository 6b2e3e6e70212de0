"""Render docs/BENCHMARKS.md from the result files in docs/benchmarks/ (``python -m tokenrec.bench.report``).

The page quotes only what the JSON files hold, each with its command, commit, machine and date, so a number in
the docs always says how it was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    lines = [f"### {title}", "", _provenance(doc), ""]
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


def _split_cells(m: dict[str, dict[str, float]]) -> str:
    """``valid HR@20 | valid NDCG@20 | test HR@20 | test NDCG@20`` table cells of one metrics entry."""
    return " | ".join(f"{m[split][k]:.4f}" for split in ("valid", "test") for k in ("HR@20", "NDCG@20"))


def _unseen(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    lines = [f"### Seen vs unseen users: {res.get('dataset', '?')}", "", _provenance(doc), ""]
    lines += [
        f"Users: {res['users']}; protocol: " + "; ".join(f"{k}: {v}" for k, v in res["protocol"].items())
    ]
    lines += [
        "",
        "| model | users | valid HR@20 | valid NDCG@20 | test HR@20 | test NDCG@20 |",
        "|---|---|---|---|---|---|",
    ]
    for name, groups in res.items():
        if isinstance(groups, dict) and isinstance(groups.get("seen"), dict):  # not the user counts
            lines += [f"| {name} | {group} | {_split_cells(m)} |" for group, m in groups.items()]
    return lines + [""]


def _sweep(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    lines = [f"### TokenRec configurations tried: {res.get('dataset', '?')}", "", _provenance(doc), ""]
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


def _probe(doc: dict[str, Any]) -> list[str]:
    res = doc["results"]
    run = f" ({Path(res['run_dir']).name})" if res.get("run_dir") else ""
    lines = [
        f"### Scoring probe of a trained TokenRec run: {res.get('dataset', '?')}{run}",
        "",
        _provenance(doc),
        "",
    ]
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
    lines = [
        f"### TokenRec trained longer, validation only: {res.get('dataset', '?')}",
        "",
        _provenance(doc),
        "",
    ]
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
    return [
        f"### {name}",
        "",
        _provenance(doc),
        "",
        "```json",
        json.dumps(doc["results"], indent=2),
        "```",
        "",
    ]


def render() -> str:
    out = [
        "# Benchmarks",
        "",
        "Generated by `python -m tokenrec.bench.report` from `docs/benchmarks/*.json`; every number below was",
        "measured by the command shown with it. Timings on this 2-core CPU vary with load: a result taken while",
        "other jobs ran says so in its notes.",
        "",
    ]
    notes = RESULTS / "NOTES.md"
    if notes.is_file():
        out += [notes.read_text().strip(), ""]
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        if path.stem.startswith("unseen-users-"):
            out += _unseen(doc)
        elif path.stem.startswith("sweep-tokenrec-"):
            out += _sweep(doc)
        elif path.stem.startswith("probe-tokenrec-scoring-"):
            out += _probe(doc)
        elif "validation_per_epoch" in doc["results"]:
            out += _validation_trajectory(doc)
        elif path.stem.startswith("quality-") or "protocol" in doc["results"]:
            out += _quality(doc, path.stem)
        else:
            out += _generic(path.stem, doc)
    return "\n".join(out) + "\n"


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
