"""Typed, layered config: defaults < preset < YAML < --set; unknown keys and bad types are errors."""

import pytest
import yaml

from tokenrec.config import Config, load_config, save_config
from tokenrec.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_work_offline(home):
    cfg = load_config()
    assert cfg.source.dataset == "ml100k"
    assert cfg.etl.kcore == 5
    assert cfg.etl.split == "leave_one_out"
    assert cfg.paths.lake == str(home / "lake")


def test_precedence_defaults_preset_yaml_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"etl": {"kcore": 10, "rating_threshold": 3.5}, "spark": {"master": "local[1]"}}))
    base = {"etl": {"kcore": 7}, "source": {"dataset": "lastfm"}}
    cfg = load_config(path, ["etl.kcore=20", "spark.conf.spark.foo=bar"], base=base)
    assert cfg.etl.kcore == 20  # --set beats YAML beats preset
    assert cfg.etl.rating_threshold == 3.5  # YAML
    assert cfg.source.dataset == "lastfm"  # preset
    assert cfg.spark.master == "local[1]"


def test_spark_conf_values_are_the_text_spark_reads():
    cfg = load_config(overrides=["spark.conf.spark.sql.adaptive.enabled=false", "spark.conf.spark.sql.shuffle.partitions=4"])
    assert cfg.spark.conf == {"spark.sql.adaptive.enabled": "false", "spark.sql.shuffle.partitions": "4"}


def test_unknown_key_lists_valid_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["etl.kcroe=3"])
    message = str(err.value)
    assert "kcroe" in message and "kcore" in message and "rating_threshold" in message
    path = tmp_path / "c.yaml"
    path.write_text("etll:\n  kcore: 3\n")
    with pytest.raises(ConfigError, match="valid keys at the top level: paths, source, etl"):
        load_config(path)


def test_retrieval_topk_is_gone_and_an_unknown_key(tmp_path):
    """Top-K is ``inference.topk``; a YAML that still sets ``retrieval.topk`` fails like any unknown key."""
    path = tmp_path / "old.yaml"
    path.write_text("retrieval:\n  topk: 20\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'retrieval.topk' in .*old.yaml; valid keys at retrieval"
    ):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("etl.kcore=five", "etl.kcore must be an integer"),
        ("etl.kcore=-1", "etl.kcore must be >= 0"),
        ("etl.split=random", "etl.split must be one of leave_one_out, global_time"),
        ("source.format=xlsx", "source.format must be one of"),
        ("source.header=maybe", "source.header must be true or false"),
        ("etl", "--set expects section.key=value"),
        ("etl=3", "etl in --set etl=3 must be a mapping"),
    ],
)
def test_bad_values_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_null_and_numbers_are_coerced():
    cfg = load_config(overrides=["etl.rating_threshold=4", "etl.rating_threshold=null", "source.delimiter=;"])
    assert cfg.etl.rating_threshold is None
    assert load_config(overrides=["etl.rating_threshold=4"]).etl.rating_threshold == 4.0
    assert load_config(overrides=["source.delimiter=;"]).source.delimiter == ";"


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads ``2e-4`` as text; in a number field it is the number (from --set and from a file)."""
    assert load_config(overrides=["llm.lr=2e-4"]).llm.lr == 2e-4
    assert load_config(overrides=["llm.head_lr=+1E-3"]).llm.head_lr == 1e-3
    path = tmp_path / "lr.yaml"
    path.write_text("llm:\n  lr: 5e-5\n")
    assert load_config(path).llm.lr == 5e-5
    with pytest.raises(ConfigError, match="llm.lr must be a number, got 'e-4'"):
        load_config(overrides=["llm.lr=e-4"])


def test_missing_or_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_saved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(overrides=["etl.kcore=3"])
    saved = save_config(cfg, tmp_path)
    again = load_config(saved)
    assert again.to_dict() == cfg.to_dict()
    assert again.hash() == cfg.hash()
    assert load_config().hash() != cfg.hash()
    assert isinstance(again, Config)
