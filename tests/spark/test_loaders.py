"""Raw-format loaders: nothing is lost (R3), arbitrary lines never crash, reasons name the field."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenrec import schema
from tokenrec.config import SourceConfig
from tokenrec.data.loaders import list_source_files, load_source
from tokenrec.errors import InputError

pytestmark = pytest.mark.spark

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
NAMED = dict(user_col="u", item_col="i", time_col="t", rating_col="r")


def _counts(parsed):
    rows = parsed.records.collect()
    valid = sum(r[schema.REASON] is None for r in rows)
    return len(rows), valid, len(rows) - valid, parsed.events.count()


def _reasons(parsed):
    return {r[schema.LINE_NO]: r[schema.REASON] for r in parsed.records.collect()}


def test_movielens_inter_quarantines_truncated_extra_and_unparsable(spark, tmp_path):
    path = tmp_path / "ml.inter"
    path.write_text(
        f"{INTER_HEADER}\n1\t10\t4\t881250949\n1\t11\t3\t881250950\t7\n2\t10\tx\t881250951\n"
        "3\t12\t5\tsoon\n\n2\t11\t5"  # truncated last line, no newline
    )
    parsed = load_source(spark, SourceConfig(format="movielens_inter"), str(path))
    raw, valid, quarantined, events = _counts(parsed)
    assert (raw, valid, quarantined, events) == (6, 1, 5, 1)
    reasons = _reasons(parsed)
    assert reasons[2] is None
    assert reasons[3] == "expected 4 fields separated by tabs, got 5"
    assert reasons[4] == "rating: 'x' is not a number"
    assert reasons[5] == "timestamp: 'soon' is not a number"
    assert reasons[6] == "empty line"
    assert reasons[7] == "expected 4 fields separated by tabs, got 3"
    event = parsed.events.collect()[0]
    assert (event.user_id, event.item_id, event.rating) == ("1", "10", 4.0)
    assert event.event_ts.timestamp() == 881250949


def test_movielens_dat(spark, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n1::914\n")
    parsed = load_source(spark, SourceConfig(format="movielens_dat"), str(path))
    assert _counts(parsed) == (3, 2, 1, 2)
    assert _reasons(parsed)[3] == "expected 4 fields separated by '::', got 2"


def test_user_sequence_positions_are_timestamps(spark, tmp_path):
    path = tmp_path / "user_sequence.txt"
    path.write_text("u1 a b c\nu2\nu3  d   e \n")
    parsed = load_source(spark, SourceConfig(format="user_sequence"), str(path))
    assert _counts(parsed)[:3] == (3, 2, 1)
    events = sorted((r.user_id, r.item_id, int(r.event_ts.timestamp())) for r in parsed.events.collect())
    assert events == [("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u3", "d", 0), ("u3", "e", 1)]


def test_csv_with_quotes_and_bad_rows(spark, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text('u,i,t,r\n1,"a,b",100,5\n2,c,200\n3,d,300,4,extra\n4,e,400,\n"5,f,500,1\n')
    parsed = load_source(spark, SourceConfig(format="csv", **NAMED), str(path))
    assert _counts(parsed)[:3] == (5, 1, 4)
    reasons = _reasons(parsed)
    assert reasons[3].startswith("unparsable CSV record: expected 4 fields")
    assert reasons[5] == "r: missing"
    assert parsed.events.collect()[0].item_id == "a,b"


def test_jsonl(spark, tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [{"u": "1", "i": 2, "t": 100, "r": 4}, {"u": "1"}, "not json", {"u": 2, "i": 3, "t": "x", "r": 1}]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    parsed = load_source(spark, SourceConfig(format="jsonl", **NAMED), str(path))
    assert _counts(parsed) == (4, 1, 3, 1)
    reasons = _reasons(parsed)
    assert reasons[2] == "i: missing" and reasons[4] == "t: 'x' is not a number"


def test_parquet_with_timestamp_column(spark, tmp_path):
    import datetime as dt

    ts = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC), None, dt.datetime(2026, 1, 2, tzinfo=dt.UTC)]
    pq.write_table(pa.table({"u": ["a", "b", None], "i": [1, 2, 3], "t": ts}), tmp_path / "e.parquet")
    parsed = load_source(spark, SourceConfig(format="parquet", user_col="u", item_col="i", time_col="t"), str(tmp_path))
    assert _counts(parsed) == (3, 1, 2, 1)
    assert set(_reasons(parsed).values()) == {None, "t: missing", "u: missing"}


def test_landing_partitions_are_read_up_to_the_logical_date(tmp_path):
    import datetime as dt

    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        (tmp_path / f"dt={day}").mkdir()
        (tmp_path / f"dt={day}" / "part.csv").write_text("u,i,t\n")
    (tmp_path / "_SUCCESS").write_text("")
    files = list_source_files(str(tmp_path), dt.date(2026, 1, 2))
    assert [f.split("/")[-2] for f in files] == ["dt=2026-01-01", "dt=2026-01-02"]


@pytest.mark.parametrize(
    ("fmt", "content", "match"),
    [
        ("movielens_inter", None, "the source path does not exist"),
        ("movielens_inter", "", "the file is empty"),
        ("csv", "u;i;t\n1;2;3\n", "the file seems to use ';': set source.delimiter"),
        ("csv", "user,item,time\n1,2,3\n", "field 'u': no column 'u' in the header"),
        ("movielens_inter", "user_id:token\tstamp:float\n1\t2\n", "field 'item_id'"),
    ],
)
def test_unusable_files_fail_with_file_and_field(spark, tmp_path, fmt, content, match):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=match) as err:
        load_source(spark, SourceConfig(format=fmt, **(NAMED if fmt == "csv" else {})), str(path)).records.count()
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------ property-based tests
LINE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
PROPERTY = settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _valid_line(fmt):
    ids = st.integers(0, 50).map(str)
    ts = st.integers(0, 2_000_000_000).map(str)
    rating = st.integers(1, 5).map(str)
    if fmt == "movielens_inter":
        return st.tuples(ids, ids, rating, ts).map("\t".join)
    if fmt == "movielens_dat":
        return st.tuples(ids, ids, rating, ts).map("::".join)
    if fmt == "user_sequence":
        return st.tuples(ids, st.lists(ids, min_size=1, max_size=5)).map(lambda x: " ".join([x[0], *x[1]]))
    if fmt == "csv":
        return st.tuples(ids, ids, ts, rating).map(",".join)
    return st.fixed_dictionaries({"u": ids, "i": ids, "t": ts, "r": rating}).map(json.dumps)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["movielens_inter", "movielens_dat", "user_sequence", "csv", "jsonl"])
@PROPERTY
@given(data=st.data())
def test_arbitrary_lines_never_crash_and_never_vanish(spark, tmp_path_factory, fmt, data):
    lines = data.draw(st.lists(st.one_of(_valid_line(fmt), st.text(LINE_CHARS, max_size=40)), min_size=1, max_size=25))
    trailing_newline = data.draw(st.booleans())
    header = {"movielens_inter": INTER_HEADER, "csv": "u,i,t,r"}.get(fmt)
    body = "\n".join(([header] if header else []) + lines) + ("\n" if trailing_newline else "")
    path = tmp_path_factory.mktemp(fmt) / "input.txt"
    path.write_text(body, encoding="utf-8")
    # Physical lines: a final "\n" ends the last line rather than starting an empty one.
    expected = len(body.split("\n")) - body.endswith("\n") - (header is not None) if body else 0
    source = SourceConfig(format=fmt, **(NAMED if fmt in ("csv", "jsonl") else {}))
    if not body:
        with pytest.raises(InputError, match="the file is empty"):
            load_source(spark, source, str(path))
        return
    parsed = load_source(spark, source, str(path))
    raw, valid, quarantined, events = _counts(parsed)
    assert raw == expected  # one record per line written: nothing dropped, nothing invented
    assert raw == valid + quarantined
    if fmt != "user_sequence":
        assert events == valid
    assert all(r[schema.REASON] is None or r[schema.REASON] for r in parsed.records.collect())


@pytest.mark.slow
@PROPERTY
@given(
    users=st.lists(st.one_of(st.none(), st.text(LINE_CHARS, max_size=8)), min_size=1, max_size=20),
    times=st.lists(st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-(2**62), 2**62)), min_size=20, max_size=20),
)
def test_arbitrary_parquet_rows_never_vanish(spark, tmp_path_factory, users, times):
    n = len(users)
    table = pa.table({"u": users, "i": [str(k) for k in range(n)], "t": pa.array([float(x) if x is not None else None for x in times[:n]])})
    folder = tmp_path_factory.mktemp("pq")
    pq.write_table(table, folder / "e.parquet")
    parsed = load_source(spark, SourceConfig(format="parquet", user_col="u", item_col="i", time_col="t"), str(folder))
    raw, valid, quarantined, events = _counts(parsed)
    assert raw == n == valid + quarantined and events == valid
