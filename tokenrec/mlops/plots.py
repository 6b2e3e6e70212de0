"""PNG plots of stage outputs, for MLflow and for people: training curves, model comparison, codebook usage.

Each function reads one file of the artifact layout (or its already loaded content), draws with matplotlib's
Agg canvas (headless, no global backend switch) and writes the PNG atomically to ``out``, returning its path:

- :func:`plot_training_curves`: a ``history.json`` (a list of epoch records, or ``{entity: [records]}`` as
  the tokenizer writes): every numeric per-epoch value (losses, seconds, ...) on the left; on the right the
  validation metrics (``record["valid"]``), or, without them, the per-level lists (usage, perplexity);
- :func:`plot_model_metrics`: an ``eval/metrics.json``: HR@K and NDCG@K, one bar group per model;
- :func:`plot_codebook_usage`: a tokenizer ``stats.json``: share of the L codes used and perplexity per level.

:func:`stage_plots` draws all that apply to one stage folder; :mod:`tokenrec.mlops.tracking` logs them under
``plots/`` of the stage's MLflow run.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from tokenrec.run_folder import HISTORY_FILE, METRICS_FILE, STATS_FILE
from tokenrec.storage import atomic_write_bytes, read_json

_NOT_CURVES = {"epoch"}  # record keys that are the x axis, not a series
SPLITS = ("valid", "test")


def stage_plots(stage_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], stage: str) -> list[Path]:
    """Every plot that the files of ``stage_dir`` allow, written into ``out_dir``; returns their paths.

    - ``history.json`` -> ``training_curves.png``; ``<sub>/history.json`` (a baseline trained by
      ``evaluate``, e.g. ``mf/``) -> ``training_curves_<sub>.png``;
    - ``metrics.json`` with per-model entries (``evaluate``, ``train-llm``) -> ``metrics_valid.png``,
      ``metrics_test.png``;
    - ``stats.json`` with per-level usage (``train-tokenizer``) -> ``codebook_usage.png``.
    """
    stage_dir, out_dir = Path(stage_dir), Path(out_dir)
    made = []
    if (stage_dir / HISTORY_FILE).is_file():
        made.append(plot_training_curves(stage_dir / HISTORY_FILE, out_dir / "training_curves.png", stage))
    for history in sorted(stage_dir.glob(f"*/{HISTORY_FILE}")):
        name = history.parent.name
        made.append(
            plot_training_curves(history, out_dir / f"training_curves_{name}.png", f"{stage}: {name}")
        )
    if (stage_dir / METRICS_FILE).is_file():
        document = read_json(stage_dir / METRICS_FILE)
        for split in SPLITS:
            if _models(document, split):
                made.append(plot_model_metrics(document, out_dir / f"metrics_{split}.png", split))
    if (stage_dir / STATS_FILE).is_file():
        stats = read_json(stage_dir / STATS_FILE)
        if any(isinstance(v, dict) and "usage" in v for v in stats.values()):
            made.append(plot_codebook_usage(stats, out_dir / "codebook_usage.png"))
    return made


def plot_training_curves(history: Any, out: str | os.PathLike[str], title: str = "training") -> Path:
    """Per-epoch curves of a ``history.json``.

    Args:
        history: the path of a ``history.json`` or its content: a list of records ``{"epoch": e, "loss": x,
            ..., "valid": {"NDCG@20": y, ...}}`` or a mapping ``{entity: [records]}``.
        out: the PNG file to write.
        title: figure title (e.g. the stage name).

    Returns:
        ``out`` as a Path.
    """
    if isinstance(history, str | os.PathLike):
        history = read_json(history)
    groups = history if isinstance(history, dict) else {"": history}
    has_valid = any("valid" in r for records in groups.values() for r in records)
    fig, (left, right) = _figure(ncols=2, size=(11, 4))
    for entity, records in groups.items():
        prefix = f"{entity} " if entity else ""
        for key, (epochs, values) in _series(records, "scalars").items():
            left.plot(epochs, values, label=prefix + key)
        for key, (epochs, values) in _series(records, "valid" if has_valid else "lists").items():
            right.plot(epochs, values, marker="o", markersize=2, label=prefix + key)
    left.set_title(f"{title}: per-epoch values")
    right.set_title(f"{title}: {'validation metrics' if has_valid else 'per-level values'}")
    left.set_yscale("symlog", linthresh=1e-3)  # losses and counts of very different sizes
    if not has_valid:
        right.set_yscale("symlog", linthresh=1e-3)  # usage (<= 1) beside perplexity (up to L)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        _legend_or_note(ax)
    return _save(fig, out)


def plot_model_metrics(metrics: Any, out: str | os.PathLike[str], split: str = "valid") -> Path:
    """Grouped bars of HR@K and NDCG@K per model of an ``eval/metrics.json``.

    Args:
        metrics: the path of the metrics file or its content ``{"<model>": {"valid": {...}, "test": {...}}}``.
        out: the PNG file to write.
        split: ``valid`` or ``test``.

    Returns:
        ``out`` as a Path.
    """
    if isinstance(metrics, str | os.PathLike):
        metrics = read_json(metrics)
    models = _models(metrics, split)
    names = sorted({k for m in models for k in metrics[m][split]}, key=_metric_order)
    fig, (ax,) = _figure(ncols=1, size=(max(6, 1.6 * len(models) + 3), 4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(models))]
        ys = [float(metrics[m][split].get(name, math.nan)) for m in models]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(models)), [_label(m, metrics[m]) for m in models], rotation=20)
    ax.set_ylabel(split)
    ax.set_title(f"{metrics.get('dataset', '')} {split}: HR@K and NDCG@K per model".strip())
    _legend_or_note(ax)
    return _save(fig, out)


def plot_codebook_usage(stats: Any, out: str | os.PathLike[str]) -> Path:
    """Share of codes used and perplexity per level for each entity kind of a tokenizer ``stats.json``.

    Args:
        stats: the path of ``stats.json`` or its content ``{"user": {"usage": [..K], "perplexity": [..K],
            "codebook_size": L, ...}, "item": {...}}``.
        out: the PNG file to write.

    Returns:
        ``out`` as a Path.
    """
    if isinstance(stats, str | os.PathLike):
        stats = read_json(stats)
    entities = [e for e, v in stats.items() if isinstance(v, dict) and "usage" in v]
    fig, axes = _figure(ncols=max(1, len(entities)), size=(5 * max(1, len(entities)), 3.8))
    for ax, entity in zip(axes, entities, strict=False):
        usage, ppl = stats[entity]["usage"], stats[entity].get("perplexity", [])
        size = stats[entity].get("codebook_size", "L")
        levels = range(1, len(usage) + 1)
        bars = ax.bar(levels, usage)
        for bar, value in zip(bars, ppl, strict=False):
            ax.annotate(
                f"ppl {value:.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, 1.1)
        ax.set_xticks(list(levels))
        ax.set_xlabel("level (codebook)")
        ax.set_ylabel(f"share of the {size} codes used")
        collisions = stats[entity].get("colliding_entities")
        extra = f", {collisions} colliding" if collisions is not None else ""
        ax.set_title(f"{entity}s: {stats[entity].get('entities', '?')} entities{extra}")
    if not entities:
        _legend_or_note(axes[0])
    return _save(fig, out)


def _models(metrics: dict[str, Any], split: str) -> list[str]:
    """The entries of a metrics document that hold numbers of ``split``."""
    return [m for m, v in metrics.items() if isinstance(v, dict) and isinstance(v.get(split), dict)]


def _label(model: str, entry: dict[str, Any]) -> str:
    """``champion v3`` for the champion scored on this split (it carries its version), else the name."""
    version = entry.get("version")
    return f"{model} v{version}" if version is not None else model


def _series(records: list[dict[str, Any]], part: str) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (epochs, values)}`` of the records' numeric ``scalars``, their ``valid`` dicts' numbers, or
    their numeric ``lists`` (one series per position, e.g. per codebook level)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for i, record in enumerate(records):
        epoch = record.get("epoch", i + 1)
        source = record.get("valid", {}) if part == "valid" else record
        for key, value in source.items():
            if key in _NOT_CURVES:
                continue
            if part == "lists" and isinstance(value, list):
                points = {f"{key} {j + 1}": v for j, v in enumerate(value)}
            elif part != "lists" and not isinstance(value, list | dict):
                points = {key: value}
            else:
                continue
            for name, number in points.items():
                if isinstance(number, int | float) and not isinstance(number, bool):
                    epochs, values = series.setdefault(name, ([], []))
                    epochs.append(epoch)
                    values.append(float(number))
    return dict(sorted(series.items(), key=lambda kv: _metric_order(kv[0])))


def _metric_order(name: str) -> tuple[str, int]:
    """HR@10 < HR@20 < NDCG@10 ...: by family, then by the cut-off as a number."""
    family, _, k = name.partition("@")
    return (family, int(k) if k.isdigit() else 0)


def _figure(ncols: int, size: tuple[float, float]) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _legend_or_note(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _save(fig: Any, out: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(out, buffer.getvalue())
