"""The nightly HTML report (tokenrec/reporting/report.py) on a real retrain, registry and nightly run, seen in Chromium.

A tiny retrain (tests/integration/test_packaging.py's world) is registered twice: version 1 becomes champion,
version 2 (better validation metrics) is promoted over it. The nightly chain for D then publishes the output
and, in ``publish``, the report. Headless Chromium (Debian package ``chromium``, installed by ``make
browser``) loads the page: its DOM must hold the headings, the metrics of version 2 against version 1,
coverage numbers recomputed here from the Parquet output, and the example users' history and top 10; every
image must decode.
A rerun of the date gives the same bytes (R1). That the numbers are those of the analyst SQL is checked on
the hand-built lake of tests/spark/test_analytics.py.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.integration.test_packaging import DS, SETTINGS, World, build_world, write_metrics
from tokenrec import cli, schema
from tokenrec.data.id_maps import read_id_map
from tokenrec.data.interactions import InteractionData
from tokenrec.errors import PublishError
from tokenrec.mlops import registry
from tokenrec.reporting import report
from tokenrec.storage import atomic_write_json, current_version, read_json, read_manifest, staged_version
from tokenrec.tasks import batch_inference, promote, publish, register, validate_recommendations

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IMAGES = 6  # model metrics, three training curves, codebook usage, popularity deciles
HEADINGS = ["Overview", "Model against the champion", "Training", "Coverage and popularity", "Example users"]
GNN_HISTORY = [
    {
        "epoch": e,
        "loss": 0.7 / e,
        "reg": 1e-4 * e,
        **({"valid": {"NDCG@20": 0.05 + 0.01 * e}} if e % 2 == 0 else {}),
    }
    for e in range(1, 7)
]
LLM_HISTORY = [
    {"epoch": e, "loss": 0.9 - 0.2 * e, "pos_cos": 0.5 + 0.1 * e, "valid": {"NDCG@20": 0.1 * e}}
    for e in (1, 2)
]


def nightly(cfg, ds: str) -> dict:
    batch_inference.run(cfg, ds, None)
    validate_recommendations.run(cfg, ds, None)
    return publish.run(cfg, ds, None)


@dataclass
class Nightly:
    world: World
    published: dict  # the summary of the publish task, with its "report"

    @property
    def page(self) -> Path:
        return Path(self.published["report"]["report"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Nightly:
    """Champion version 2 promoted over version 1; the nightly of D published with its report."""
    world = build_world(tmp_path_factory.mktemp("report"))
    atomic_write_json(world.run_dir / "gnn" / "history.json", GNN_HISTORY)
    atomic_write_json(world.run_dir / "llm" / "history.json", LLM_HISTORY)
    register.run(world.cfg, DS, world.run_dir)
    promote.run(world.cfg, DS, None)
    write_metrics(world.run_dir, 0.2)  # the second version is better on every gated metric
    assert register.run(world.cfg, DS, world.run_dir)["version"] == 2
    assert promote.run(world.cfg, DS, None)["promoted"]
    return Nightly(world, nightly(world.cfg, DS))


class Dom(HTMLParser):
    """Headings, table rows (by table class), images and body attributes of a serialized DOM."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self._text: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in ("h1", "h2", "h3", "td", "th"):
            self._text = []
        if tag == "table":
            self.tables.append((values.get("class", ""), []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag == "img":
            self.images.append(values)
        elif tag == "body":
            self.body = values

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3"):
            self.headings.append((tag, "".join(self._text or [])))
        elif tag in ("td", "th"):
            self.tables[-1][1][-1].append("".join(self._text or []))
        if tag in ("h1", "h2", "h3", "td", "th"):
            self._text = None

    def rows(self, css: str) -> list[list[str]]:
        return [row for kind, rows in self.tables if kind.split()[0] == css for row in rows]

    def facts(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.rows("facts")}


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a fresh profile and no network features; return its stdout."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (make browser)")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def dom(run: Nightly, tmp_path_factory: pytest.TempPathFactory) -> Dom:
    return Dom(chromium(tmp_path_factory.mktemp("chromium"), "--dump-dom", run.page.as_uri()))


def test_publish_writes_the_report_beside_the_output_and_logs_it_to_the_retrain_run(run: Nightly, tmp_path):
    world, page = run.world, run.page
    assert page == report.report_partition(world.lake, DS) / "report.html" and page.parent.is_symlink()
    manifest = read_manifest(page.parent)
    output = world.lake.recommendations(DS)
    assert manifest["recommendations_version"] == current_version(output).name
    assert (manifest["model_name"], manifest["model_version"]) == ("tokenrec", "2")
    assert run.published["report"]["sha256"] == manifest["sha256"]
    assert not list(current_version(output).glob("*.html"))  # the output partition holds only its data

    client, _ = registry.connect(world.cfg)
    parent = registry.retrain_run(world.cfg, world.run_dir.name)
    assert run.published["report"]["mlflow_run_id"] == parent
    logged = client.download_artifacts(parent, f"reports/dt={DS}/report.html", str(tmp_path))
    assert Path(logged).read_bytes() == page.read_bytes()


def test_the_page_is_self_contained(run: Nightly):
    text = run.page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "default-src 'none'; img-src data:" in text  # the browser may load nothing else
    assert text.count("<img ") == text.count('src="data:image/png;base64,') == IMAGES


def test_chromium_shows_the_sections_and_the_model_against_the_champion(run: Nightly, dom: Dom):
    world = run.world
    assert dom.headings[0] == ("h1", f"tokenrec report: recommendations for {DS}")
    assert [text for tag, text in dom.headings if tag == "h2"] == HEADINGS
    facts = dom.facts()
    assert facts["model"] == "tokenrec version 2" and facts["retrain"] == world.run_dir.name
    assert facts["compared with"] == "version 1, scored on this retrain's evaluation split"
    assert facts["promotion gate"].startswith("passed: ")
    header, *rows = dom.rows("metrics")
    assert header[1:3] == ["this model (v2)", "champion it was compared with (v1)"]
    by_metric = {row[0]: row[1:] for row in rows}
    for name in world.cfg.mlflow.gated_metrics:  # write_metrics: NDCG@20 = x, HR@20 = 2x; v1 x=0.1, v2 x=0.2
        new, old = (0.4, 0.2) if "HR" in name else (0.2, 0.1)
        assert by_metric[name.replace(".", " ")] == [
            f"{new:.4f}",
            f"{old:.4f}",
            f"{new - old:+.4f} (+100.0%)",
            "gate",
        ]
    evaluation = read_json(world.run_dir / "eval" / "metrics.json")  # every model, the champion included
    models = [m for m, v in evaluation.items() if isinstance(v, dict) and "valid" in v]
    assert [row[0] for row in dom.rows("evaluation")] == ["model", *models] and "champion" in models
    for history in (GNN_HISTORY, LLM_HISTORY):  # the numbers behind the last point of each curve
        last = history[-1]
        assert f"loss {last['loss']:.4g}" in facts[f"epoch {last['epoch']} ({len(history)} recorded)"]
    codebooks = {row[0]: row for row in dom.rows("codebooks")[1:]}
    assert set(codebooks) == {"user", "item"} and codebooks["item"][1] == str(world.data.n_items)


def test_chromium_shows_coverage_computed_from_the_output(run: Nightly, dom: Dom):
    lake = run.world.lake
    recs = pq.read_table(lake.recommendations(DS)).to_pandas()
    items = read_id_map(lake.id_map(schema.ITEMS)).to_pandas()
    train = pd.Series(InteractionData.load(lake.interactions(DS)).train_pairs[1]).value_counts()
    counts = pd.DataFrame({"idx": items.idx, "n": items.idx.map(train).fillna(0)})
    top_n = math.ceil(0.1 * len(items))
    ranked = counts.sort_values(["n", "idx"], ascending=[False, True]).idx
    popular = set(items.set_index("idx").raw_id[ranked[:top_n]])
    facts = dom.facts()
    assert facts["catalog (items first seen on or before the day)"] == str(len(items))
    assert facts["distinct items recommended"] == str(recs.item_id.nunique())
    assert facts["catalog coverage (all ranks)"] == f"{recs.item_id.nunique() / len(items):.1%}"
    assert (
        facts["share of recommendations going to popular items"] == f"{recs.item_id.isin(popular).mean():.1%}"
    )
    assert facts["popular items (top 10% of the catalog by training interactions)"] == str(top_n)


def test_chromium_shows_each_example_user_s_history_and_top_10(run: Nightly, dom: Dom):
    lake = run.world.lake
    recs = pq.read_table(lake.recommendations(DS)).to_pandas()
    snapshot = pq.read_table(lake.interactions(DS)).to_pandas()
    users = sorted(recs.user_id.unique(), key=lambda u: (len(u), u))[:3]  # as `tokenrec show` picks them
    assert [text for tag, text in dom.headings if text.startswith("user ")] == [f"user {u}" for u in users]
    tables = [rows[1:] for kind, rows in dom.tables if kind in ("history", "top")]
    for user, history, top in zip(users, tables[0::2], tables[1::2], strict=True):
        expected = recs[recs.user_id == user].sort_values("rank").head(10)
        assert [row[1] for row in top] == expected.item_id.tolist()
        assert [row[3] for row in top] == [f"{s:.4f}" for s in expected.score]
        mine = snapshot[snapshot.user_idx == int(user.split("-")[1])].sort_values(["event_ts", "item_idx"])
        assert [row[1] for row in history] == [f"item-{i:04d}" for i in mine.item_idx.tail(10)]
        assert [row[3] for row in history] == mine.split.tail(10).tolist()


def test_every_image_decodes_and_the_page_paints(run: Nightly, tmp_path: Path):
    """A copy with a probe script (the page's policy forbids scripts) reports each image's decoded size."""
    text = run.page.read_text()
    policy = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', text).group(0)
    probe = tmp_path / "probe.html"
    probe.write_text(
        text.replace(policy, "").replace(
            "</body>",
            (
                "<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
                "JSON.stringify([...document.images].map("
                "i => [i.complete, i.naturalWidth, i.naturalHeight]))));"
                "</script></body>"
            ),
        )
    )
    dom = Dom(chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()))
    images = json.loads(dom.body["data-images"])
    assert len(images) == IMAGES and all(done and w > 200 and h > 200 for done, w, h in images), images

    shot = tmp_path / "page.png"
    chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", run.page.as_uri())
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        assert (
            len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 100
        )  # text, tables and plots, not a blank


def test_rerunning_the_date_gives_the_same_page(run: Nightly, capsys):
    """R1: the nightly rerun of D and `tokenrec report --ds D` leave the same bytes (nothing republished)."""
    world, page = run.world, run.page
    before, version = page.read_bytes(), current_version(page.parent)
    again = nightly(world.cfg, DS)
    assert again["report"]["changed"] is False and page.read_bytes() == before
    assert current_version(page.parent) == version
    config = [
        f"--set={item}"
        for item in (
            *SETTINGS,
            f"paths.home={world.cfg.paths.home}",
            f"mlflow.tracking_uri={world.cfg.mlflow.tracking_uri}",
        )
    ]
    assert cli.main(["report", "--ds", DS, *config]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["changed"] is False and summary["sha256"] == read_manifest(page.parent)["sha256"]
    assert current_version(page.parent) == version and page.read_bytes() == before
    assert cli.main(["report", "--ds", "2026-11-28", *config]) == 2
    assert "no published recommendations for 2026-11-28" in capsys.readouterr().err


def test_a_failing_report_never_holds_back_the_output(run: Nightly):
    """The swap happens first; the task then fails naming the published data, and a retry writes the page."""
    world, page = run.world, run.page
    before = page.read_bytes()
    partition = report.report_partition(world.lake, DS)
    partition.unlink()
    partition.mkdir()  # a real folder where the report's link belongs: publishing it must fail
    batch_inference.run(world.cfg, DS, None)
    validate_recommendations.run(world.cfg, DS, None)
    staged = staged_version(world.lake.recommendations(DS))
    with pytest.raises(
        PublishError, match=f"the recommendations for {DS} are published, but their report failed"
    ):
        publish.run(world.cfg, DS, None)
    assert current_version(world.lake.recommendations(DS)) == staged  # the output went live all the same

    partition.rmdir()
    retry = publish.run(world.cfg, DS, None)  # the Airflow retry: nothing to swap, the report is written
    assert retry["changed"] is False and retry["report"]["changed"] is True
    assert page.read_bytes() == before
