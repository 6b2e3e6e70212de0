"""The data contract: lake paths never escape the root, logical dates are strict."""

import pyarrow as pa
import pytest

from tokenrec import schema
from tokenrec.errors import ConfigError, LakePathError

pytestmark = pytest.mark.unit


def test_partition_paths(tmp_path):
    lake = schema.Lake.at(tmp_path)
    assert lake.interactions("2026-11-27") == tmp_path.resolve() / "interactions" / "snapshot_date=2026-11-27"
    assert lake.recommendations("2026-11-27").name == "dt=2026-11-27"
    assert lake.id_map("users") == tmp_path.resolve() / "id_maps" / "users"


@pytest.mark.parametrize("ds", ["2026-13-01", "27/11/2026", "2026-1-1", "", "2026-11-27T00:00", "../../etc"])
def test_bad_logical_dates(ds):
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        schema.parse_ds(ds)


@pytest.mark.parametrize("name", ["../outside", "/etc", "raw/../../x"])
def test_paths_cannot_escape_the_lake(tmp_path, name):
    lake = schema.Lake.at(tmp_path / "lake")
    with pytest.raises(LakePathError, match="escapes the lake root"):
        lake.table(name)


def test_spark_ddl_matches_arrow_schema():
    names = [f.strip().split(" ")[0] for f in schema.INTERACTIONS_DDL.split(",")]
    assert names == schema.INTERACTIONS.names
    assert schema.RECOMMENDATIONS.field(schema.RANK).type == pa.int16()
    assert schema.INTERACTIONS.field(schema.EVENT_TS).type == pa.timestamp("us", tz="UTC")
