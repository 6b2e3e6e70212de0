"""The HTML of the nightly report (:mod:`tokenrec.reporting.facts` gathers the numbers, this module lays them out).

One static page: values escaped with :func:`html.escape`, the skeleton a :class:`string.Template`, plots
PNG ``data:`` URIs drawn by :mod:`tokenrec.mlops.plots` (and the popularity histogram here), and a
Content-Security-Policy that allows nothing else, so the file opens anywhere without network, other files or
JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from tokenrec.config import Config
from tokenrec.reporting.facts import ModelFacts, OutputStats
from tokenrec.run_folder import GNN, LLM, TOKENIZER, RunFolder
from tokenrec.storage import read_json

SPLITS = ("valid", "test")
TRAINING_CURVES = ((GNN, "LightGCN"), (LLM, "LLM (TokenRec)"), (TOKENIZER, "ID tokenizer"))


def render_page(
    cfg: Config,
    ds: str,
    manifest: dict[str, Any],
    facts: ModelFacts,
    run: RunFolder | None,
    stats: OutputStats,
    examples: list[dict[str, Any]],
) -> str:
    """The whole page: overview, model against the champion, training, coverage, example users."""
    title = f"tokenrec report: recommendations for {ds}"
    body = "\n".join(
        [
            overview(cfg, manifest, facts),
            model_section(cfg, facts),
            training_section(run),
            coverage_section(stats),
            examples_section(examples),
        ]
    )
    return _PAGE.substitute(title=escape(title), style=_STYLE, body=body, ds=escape(ds))


# --------------------------------------------------------------------------------------------- sections


def overview(cfg: Config, manifest: dict[str, Any], facts: ModelFacts) -> str:
    fold = manifest.get("fold_in", {})
    return section(
        "overview",
        "Overview",
        fact_table(
            [
                ("data set", cfg.source.dataset),
                ("model", f"{manifest['model_name']} version {manifest['model_version']}"),
                ("retrain", facts.retrain_id or "unknown"),
                ("users with a list", integer(manifest["users"])),
                ("rows (user, rank)", integer(manifest["rows"])),
                ("K (list length)", integer(manifest["k"])),
                ("items in the retrieval index", integer(manifest.get("index_items", 0))),
                (
                    "folded in (no retrain)",
                    f"{fold.get('new_users', 0)} new users, {fold.get('new_items', 0)} new items",
                ),
                ("generated_at (logical date)", manifest["generated_at"]),
                ("tokenizer hash", manifest.get("tokenizer_hash", "")[:16]),
                ("config hash", manifest.get("config_hash", "")),
                ("input snapshot", manifest.get("input_snapshot", "")),
            ]
        ),
    )


def model_section(cfg: Config, facts: ModelFacts) -> str:
    """The gated model's metrics of this version against the champion it was compared with, and all models."""
    model, tags = cfg.mlflow.gated_model, facts.tags
    ours, theirs = facts.metrics(model), facts.champion_metrics.get(model, {})
    gated = set(cfg.mlflow.gated_metrics)
    rows = [
        [
            key.replace(".", " "),
            number(ours.get(key)),
            number(theirs.get(key)),
            delta(ours.get(key), theirs.get(key)),
            "gate" if key in gated else "",
        ]
        for key in sorted(set(ours) | set(theirs), key=metric_order)
    ]
    first = facts.champion == "none"
    verdict = "passed" if tags.get("gate_passed") == "true" else "not passed"
    parts = [
        fact_table(
            [
                ("promotion gate", f"{verdict}: {tags.get('gate_reason', 'no decision recorded')}"),
                (
                    "compared with",
                    "no earlier champion" if first else f"version {facts.champion}, {facts.champion_basis}",
                ),
                ("evaluation snapshot", tags.get("eval_snapshot", "")),
            ]
        ),
        table(
            [
                f"{model} metric",
                f"this model (v{facts.version})",
                "champion" if first else f"champion it was compared with (v{facts.champion})",
                "change",
                "",
            ],
            rows,
            "metrics",
            "no metric.* tags on the version",
        ),
        *(note(text) for text in facts.notes),
    ]
    if facts.evaluation is not None:
        parts += [f"<h3>All models of retrain {escape(facts.retrain_id)}</h3>", _eval_table(facts.evaluation)]
        parts.append(
            plot("plot_model_metrics", facts.evaluation, "HR@K and NDCG@K per model, validation", "valid")
        )
    return section("model", "Model against the champion", "\n".join(parts))


def training_section(run: RunFolder | None) -> str:
    """Training curves of the retrain's stages and the tokenizer's codebook usage."""
    if run is None or not run.root.is_dir():
        where = run.root if run is not None else None
        return section("training", "Training", note(f"the retrain's run folder {where} is not here"))
    parts = []
    for stage, title in TRAINING_CURVES:
        path = run.history(stage)
        parts.append(f"<h3>{escape(title)}</h3>")
        if not path.is_file():
            parts.append(note(f"no {path}"))
            continue
        history = read_json(path)
        parts.append(plot("plot_training_curves", history, f"{title} training curves", title))
        if isinstance(history, list) and history:  # the numbers behind the last point of every curve
            last = history[-1]
            values = {
                k: v for k, v in {**last, **last.get("valid", {})}.items() if isinstance(v, int | float)
            }
            parts.append(
                fact_table(
                    [
                        (
                            f"epoch {last.get('epoch', len(history))} ({len(history)} recorded)",
                            ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "epoch"),
                        )
                    ]
                )
            )
    stats_path = run.tokenizer_stats
    parts.append("<h3>Codebook usage</h3>")
    if not stats_path.is_file():
        return section("training", "Training", "\n".join([*parts, note(f"no {stats_path}")]))
    stats = read_json(stats_path)
    rows = [
        [
            kind,
            integer(s.get("entities", 0)),
            str(s.get("codebook_size", "")),
            " / ".join(f"{u:.0%}" for u in s["usage"]),
            " / ".join(f"{p:.0f}" for p in s.get("perplexity", [])),
            percent(s.get("collision_rate")),
        ]
        for kind, s in stats.items()
        if isinstance(s, dict) and "usage" in s
    ]
    parts.append(
        table(
            [
                "entity",
                "entities",
                "codes per level (L)",
                "codes used per level",
                "perplexity per level",
                "colliding entities",
            ],
            rows,
            "codebooks",
            "no codebooks",
        )
    )
    parts.append(plot("plot_codebook_usage", stats, "share of codes used and perplexity per level"))
    return section("training", "Training", "\n".join(parts))


def coverage_section(s: OutputStats) -> str:
    facts = fact_table(
        [
            ("catalog (items first seen on or before the day)", integer(s.catalog_size)),
            ("distinct items recommended", integer(s.items_recommended)),
            ("catalog coverage (all ranks)", percent(s.catalog_coverage)),
            ("catalog coverage (ranks 1..10)", percent(s.catalog_coverage_top10)),
            ("users whose list holds the most exposed item", percent(s.top_item_exposure_share)),
            (
                f"popular items (top {s.popular_fraction:.0%} of the catalog by training interactions)",
                integer(s.popular_items),
            ),
            ("share of recommendations going to popular items", percent(s.popular_share)),
            ("share of training interactions on popular items", percent(s.popular_train_share)),
        ]
    )
    caption = "share of recommendations and of training interactions per popularity decile"
    return section("coverage", "Coverage and popularity", facts + "\n" + image(_decile_png(s), caption))


def examples_section(examples: list[dict[str, Any]]) -> str:
    parts = []
    for ex in examples:
        parts.append(f'<h3 class="user">user {escape(ex["user_id"])}</h3>')
        parts.append(
            f"<p>latest {len(ex['history'])} of {ex['interactions']} interactions, oldest first:</p>"
        )
        parts.append(
            table(["date", "item", "title", "split"], ex["history"], "history", "not in the snapshot")
        )
        top = [[str(r), i, t, f"{s:.4f}"] for r, i, t, s in ex["top"]]
        parts.append(table(["rank", "item", "title", "score"], top, "top", "no recommendations"))
    return section("examples", "Example users", "\n".join(parts) or note("no users"))


def _eval_table(document: dict[str, Any]) -> str:
    models = [
        m
        for m, v in document.items()
        if isinstance(v, dict) and any(isinstance(v.get(s), dict) for s in SPLITS)
    ]
    keys = sorted(
        {f"{s}.{k}" for m in models for s in SPLITS for k in document[m].get(s, {})}, key=metric_order
    )
    rows = [
        [m, *(number(document[m].get(k.partition(".")[0], {}).get(k.partition(".")[2])) for k in keys)]
        for m in models
    ]
    return table(["model", *(k.replace(".", " ") for k in keys)], rows, "evaluation", "no models")


# ----------------------------------------------------------------------------------------- HTML pieces


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def section(anchor: str, heading: str, content: str) -> str:
    return f'<section id="{anchor}">\n<h2>{escape(heading)}</h2>\n{content}\n</section>'


def fact_table(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in pairs)
    return f'<table class="facts">{rows}</table>'


def table(header: list[str], rows: list[list[Any]] | list[tuple[Any, ...]], css: str, empty: str) -> str:
    if not rows:
        return note(empty)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def image(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def plot(function: str, source: Any, caption: str, *args: Any) -> str:
    """A figure drawn by ``tokenrec.mlops.plots.<function>(source, out, *args)``, embedded."""
    from tokenrec.mlops import plots

    with tempfile.TemporaryDirectory(prefix="tokenrec-report-") as tmp:
        return image(getattr(plots, function)(source, Path(tmp) / "plot.png", *args).read_bytes(), caption)


def _decile_png(s: OutputStats) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(1, len(s.decile_rec_share) + 1)
    ax.bar(x - 0.2, s.decile_rec_share, width=0.4, label="recommendations")
    ax.bar(x + 0.2, s.decile_train_share, width=0.4, label="training interactions")
    ax.axhline(1 / len(x), color="grey", linestyle=":", linewidth=1, label="uniform")
    ax.set_xticks(x, [str(d) for d in x])
    ax.set_xlabel("popularity decile of the catalog (1 = the most popular 10 %)")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- formatting


def metric_order(key: str) -> tuple[int, str, int]:
    """``valid.HR@10`` < ``valid.HR@20`` < ``valid.NDCG@10`` < ``test.HR@10``: split, family, cut-off."""
    split, _, name = key.partition(".")
    family, _, k = name.partition("@")
    return ({"valid": 0, "test": 1}.get(split, 2), family, int(k) if k.isdigit() else 0)


def number(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def integer(x: int) -> str:
    return f"{int(x):,}"


def percent(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.1%}"


def delta(new: float | None, old: float | None) -> str:
    if new is None or old is None or math.isnan(new) or math.isnan(old):
        return ""
    relative = f" ({(new - old) / abs(old):+.1%})" if old else ""
    return f"{new - old:+.4f}{relative}"


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:0 24px 48px;color:#1d2330;background:#fff}
header{border-bottom:2px solid #3b5bdb;margin-bottom:8px}h1{font-size:24px;margin:20px 0 4px}
h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d8dde6;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}nav a{margin-right:14px;color:#3b5bdb;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d8dde6;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f7}table.facts th{background:#f6f7fa;font-weight:600;width:340px}
table.metrics td:nth-child(n+2),table.evaluation td:nth-child(n+2),table.top td:nth-child(4){text-align:right}
table.evaluation{font-size:12px}figure{margin:8px 0 16px}
img{max-width:100%;height:auto;border:1px solid #e3e6ec}figcaption{color:#5c6475;font-size:12px}
.note{color:#8a5a00;background:#fff7e6;padding:4px 8px;display:inline-block}
.user{margin-top:24px}footer{margin-top:32px;color:#5c6475;font-size:12px}
"""

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$style</style>
</head>
<body>
<header>
<h1>$title</h1>
<nav><a href="#overview">Overview</a><a href="#model">Model</a><a href="#training">Training</a>
<a href="#coverage">Coverage</a><a href="#examples">Examples</a></nav>
</header>
$body
<footer>Written by <code>tokenrec report --ds $ds</code> (and by the nightly <code>publish</code> task)
from the published output of $ds, its interactions snapshot and ID maps, the model's registry tags and its
retrain's run folder. Rerunning it for the same date gives the same page.</footer>
</body>
</html>
""")
