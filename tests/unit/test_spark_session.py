"""The Spark session's JVM options: the class-data-sharing archive is written once, then read; clusters untouched."""

from __future__ import annotations

import pytest

from tokenrec.config import SparkConfig
from tokenrec.data import spark as spark_session

pytestmark = pytest.mark.unit


def test_the_first_local_jvm_writes_the_class_archive_and_later_ones_read_it(tmp_path, monkeypatch):
    from pyspark import SparkContext

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.setattr(SparkContext, "_gateway", None)  # as in a fresh job process
    options, writing = spark_session._class_data_sharing(SparkConfig(master="local[1]"))
    assert writing is not None
    temporary, archive = writing
    assert f"-XX:ArchiveClassesAtExit={temporary}" in options and "-Xlog:cds=off" in options
    assert temporary.parent == archive.parent == tmp_path / "tokenrec" / "jvm"
    archive.write_bytes(b"archive")  # what _publish_archive moves into place
    options, writing = spark_session._class_data_sharing(SparkConfig(master="local[1]"))
    assert writing is None and f"-XX:SharedArchiveFile={archive}" in options
    assert spark_session._class_data_sharing(SparkConfig(master="yarn")) == ("", None)
    assert spark_session._class_data_sharing(SparkConfig(class_data_sharing=False)) == ("", None)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "4040")  # under spark-submit the JVM is not ours to configure
    assert spark_session._class_data_sharing(SparkConfig(master="local[1]")) == ("", None)
