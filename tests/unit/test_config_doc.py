"""docs/CONFIG.md is generated from tokenrec/config.py (tokenrec/config_doc.py) and must not go stale."""

from __future__ import annotations

import dataclasses
import html
import inspect
import os
import re
from pathlib import Path

import pytest
import yaml

from tokenrec import config, config_doc

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
SOURCE = Path(config.__file__).read_text()


def all_docs() -> dict[str, config_doc.FieldDoc]:
    docs = [doc for name, cls in config_doc.sections() for doc in config_doc.field_docs(name, cls, SOURCE)]
    return {doc.key: doc for doc in docs}


def test_docs_config_md_is_up_to_date():
    assert DOC.read_text() == config_doc.render(), (
        "docs/CONFIG.md is stale: run `.venv/bin/python -m tokenrec.config_doc > docs/CONFIG.md`"
    )


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, capsys):
    stale = tmp_path / "CONFIG.md"
    stale.write_text(config_doc.render().replace("| `etl.kcore` |", "| `etl.k` |"))
    assert config_doc.main(["--check", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert config_doc.main(["--check", str(DOC)]) == 0


def test_every_field_of_every_section_has_exactly_one_row():
    text = config_doc.render()
    expected = [f"{name}.{f.name}" for name, cls in config_doc.sections() for f in dataclasses.fields(cls)]
    assert list(all_docs()) == expected
    for key in expected:
        assert text.count(f"| `{key}` |") == 1, key


def test_the_comment_beside_a_field_and_the_lines_continuing_it_are_its_meaning():
    docs, checked = all_docs(), 0
    for name, cls in config_doc.sections():
        lines = inspect.getsource(cls).splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"^    (\w+): [^#]*?  # (.*)$", line)
            if not match:
                continue
            meaning = docs[f"{name}.{match.group(1)}"].comment
            assert meaning.startswith(html.escape(match.group(2), quote=False)), (name, line)
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if following.startswith("# ") and not following.startswith(config_doc.HEADING):
                continued = following.removeprefix("# ").removeprefix("^").strip()
                assert html.escape(continued, quote=False) in meaning, (name, following)
            checked += 1
    assert checked > 100


def test_each_default_shown_is_the_default_load_config_resolves(monkeypatch):
    """A default copied from the page into `--set key=<default>` gives the default value back."""
    for name in [k for k in os.environ if k.startswith("TOKENREC_")]:
        monkeypatch.delenv(name)
    defaults = config.load_config().to_dict()
    for key, doc in all_docs().items():
        section, field = key.split(".")
        resolved = config.load_config(overrides=[f"{key}={doc.default}"]).to_dict()[section][field]
        assert resolved == defaults[section][field], (key, doc.default)
        assert yaml.safe_load(doc.default) is not None or defaults[section][field] is None, key


def test_the_values_a_field_accepts_are_listed_and_hold_its_default():
    docs = all_docs()
    assert docs["source.format"].comment.endswith(
        "one of " + ", ".join(f"`{v}`" for v in config.SOURCE_FORMATS)
    )
    listed = {key: doc for key, doc in docs.items() if "one of `" in doc.comment}
    assert len(listed) >= 10
    for key, doc in listed.items():
        allowed = re.findall(r"`([^`]+)`", doc.comment.rsplit("one of ", 1)[1])
        default = yaml.safe_load(doc.default)
        assert all(v in allowed for v in (default if isinstance(default, list) else [default])), key
