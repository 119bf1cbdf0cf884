"""The output writers on their own: encode, write, commit, roll back, recover."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from journal_helpers import read_csv, read_jsonl, read_parquet, read_sqlite

from spindle._errors import ConfigError, SpindleError
from spindle.connectors import (
    CsvOutput,
    FailuresOutput,
    JsonlOutput,
    OutputCorrupt,
    OutputError,
    OutputExists,
    ParquetOutput,
    SqliteOutput,
    UnwritableRecord,
    format_for,
    open_output,
)


def write(out: Any, records: list[Any]) -> str:
    out.write([out.encode(r) for r in records])
    point = out.commit(final=True)
    assert point is not None
    return str(point)


# -- choosing a format --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("out.jsonl", "jsonl"),
        ("OUT.NDJSON", "jsonl"),
        ("out.csv", "csv"),
        ("out.db", "sqlite"),
        ("out.sqlite3", "sqlite"),
        ("out.parquet", "parquet"),
    ],
)
def test_format_from_extension(name: str, fmt: str) -> None:
    assert format_for(name) == fmt


def test_explicit_format_wins_and_aliases() -> None:
    assert format_for("results.txt", "ndjson") == "jsonl"
    assert format_for("x.jsonl", "CSV") == "csv"


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\.jsonl"):
        format_for("out.json")
    with pytest.raises(ConfigError, match="choose one of"):
        format_for("out.jsonl", "xml")


def test_open_output_passes_options_and_rejects_bad_ones(tmp_path: Path) -> None:
    out = open_output(tmp_path / "o.csv", fields=["a"])
    assert isinstance(out, CsvOutput) and out.fields == ["a"]
    with pytest.raises(ConfigError, match="invalid option"):
        open_output(tmp_path / "o.jsonl", table="x")


def test_errors_are_spindle_errors() -> None:
    for cls in (OutputError, OutputExists, OutputCorrupt, UnwritableRecord):
        assert issubclass(cls, SpindleError)


# -- JSON lines ---------------------------------------------------------------------------


def test_jsonl_round_trip_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = JsonlOutput(path)
    assert out.open(None) == "0"
    point = write(out, [{"a": 1}, [1, 2], "text", None])
    out.close()
    assert read_jsonl(path) == [{"a": 1}, [1, 2], "text", None]
    assert int(point) == path.stat().st_size

    out = JsonlOutput(path)
    assert out.open(point) == point
    write(out, [{"b": 2}])
    out.close()
    assert read_jsonl(path)[-1] == {"b": 2}


def test_jsonl_open_cuts_a_torn_tail_back_to_the_point(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = JsonlOutput(path)
    out.open(None)
    point = write(out, [{"n": 1}])
    out.write([out.encode({"n": 2})])  # written, never committed
    out.close()
    with open(path, "ab") as f:
        f.write(b'{"n": 3, "torn')
    out = JsonlOutput(path)
    assert out.open(point) == point
    out.close()
    assert read_jsonl(path) == [{"n": 1}]


def test_jsonl_unwritable_record(tmp_path: Path) -> None:
    out = JsonlOutput(tmp_path / "o.jsonl")
    with pytest.raises(UnwritableRecord, match="object"):
        out.encode({"x": object()})
    with pytest.raises(UnwritableRecord):
        out.encode(2**70)
    assert JsonlOutput(tmp_path / "p.jsonl", default=str).encode({1: object()}).startswith(b'{"1"')


def test_failures_output_never_refuses(tmp_path: Path) -> None:
    out = FailuresOutput(tmp_path / "f.jsonl")
    out.open(None)
    write(out, [{"input": object(), "error": "E"}, 2**70, {"b": b"\x00"}])
    out.close()
    rows = read_jsonl(tmp_path / "f.jsonl")
    assert rows[0]["input"].startswith("<object object")
    assert rows[1] == {"record": str(2**70)}
    assert rows[2] == {"b": "b'\\x00'"}


def test_existing_output_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"precious\n")
    with pytest.raises(OutputExists, match="--force"):
        JsonlOutput(path).open(None)
    assert path.read_bytes() == b"precious\n"
    out = JsonlOutput(path)
    out.open(None, force=True)
    out.close()
    assert path.read_bytes() == b""


def test_an_empty_existing_output_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.touch()
    out = JsonlOutput(path)
    assert out.open(None) == "0"
    out.close()


def test_output_shorter_than_the_point_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"{}\n")
    with pytest.raises(OutputCorrupt, match="journal recorded 10"):
        JsonlOutput(path).open("10")
    assert path.read_bytes() == b"{}\n"


def test_point_not_on_a_record_boundary_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    with pytest.raises(OutputCorrupt, match="complete record"):
        JsonlOutput(path).open("5")


def test_invalid_point_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(OutputCorrupt, match="invalid commit point"):
        JsonlOutput(tmp_path / "o.jsonl").open("abc")


def test_unwritable_paths_fail_at_open_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (
        JsonlOutput(tmp_path / "missing" / "o.jsonl"),
        JsonlOutput(blocker / "o.jsonl"),
        CsvOutput(tmp_path / "missing" / "o.csv"),
        SqliteOutput(tmp_path / "missing" / "o.db"),
        SqliteOutput(blocker / "o.db"),
        ParquetOutput(tmp_path / "missing" / "o.parquet"),
    ):
        with pytest.raises(OutputError) as info:
            out.open(None)
        assert str(out.path) in str(info.value)
    with pytest.raises(OutputError, match="Is a directory"):
        JsonlOutput(tmp_path).open(None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_directory_fails_at_open(tmp_path: Path) -> None:  # pragma: no cover
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="Permission denied"):
        JsonlOutput(ro / "o.jsonl").open(None)


class FullDisk(JsonlOutput):
    """Writes ``room`` bytes, then fails the way a full disk does."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path)
        self.room = room

    def _write_all(self, fd: int, data: bytes) -> None:
        n = max(0, min(self.room, len(data)))
        os.write(fd, data[:n])
        self.room -= n
        if n < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_is_an_output_error_and_rollback_restores_the_point(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    out = FullDisk(path, room=30)
    out.open(None)
    point = write(out, [{"n": 1}])
    with pytest.raises(OutputError, match=r"no space left.*run the same command again"):
        out.write([out.encode({"n": i}) for i in range(10)])
    assert path.stat().st_size > int(point)  # a torn tail was left
    out.rollback(point)
    out.close()
    assert read_jsonl(path) == [{"n": 1}]


def test_fsync_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    out = JsonlOutput(tmp_path / "a.jsonl", fsync=False)
    out.open(None)
    write(out, [1])
    out.close()
    assert calls == []
    out = JsonlOutput(tmp_path / "b.jsonl")
    out.open(None)
    write(out, [1])
    out.close()
    assert calls


# -- CSV ----------------------------------------------------------------------------------


def test_csv_header_from_first_record_and_cells(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    out = CsvOutput(path)
    out.open(None)
    point = write(
        out, [{"a": 1, "b": "x,y"}, {"b": "line\nbreak", "a": None}, {"a": True, "b": [1, 2]}]
    )
    out.close()
    assert read_csv(path) == [
        {"a": "1", "b": "x,y"},
        {"a": "", "b": "line\nbreak"},
        {"a": "true", "b": "[1,2]"},
    ]
    out = CsvOutput(path)
    out.open(point)  # the header is read back from the file
    assert out.fields == ["a", "b"]
    write(out, [{"a": 2}])
    out.close()
    assert read_csv(path)[-1] == {"a": "2", "b": ""}
    assert path.read_text().count("a,b") == 1


def test_csv_non_mapping_records_are_one_result_column(tmp_path: Path) -> None:
    out = CsvOutput(tmp_path / "o.csv")
    out.open(None)
    write(out, [5, "x"])
    out.close()
    assert read_csv(tmp_path / "o.csv") == [{"result": "5"}, {"result": "x"}]


def test_csv_refuses_fields_that_are_not_columns(tmp_path: Path) -> None:
    out = CsvOutput(tmp_path / "o.csv", fields=["a"])
    with pytest.raises(UnwritableRecord, match=r"\['b'\]"):
        out.encode({"a": 1, "b": 2})


def test_csv_fields_must_match_the_existing_header(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    out = CsvOutput(path)
    out.open(None)
    point = write(out, [{"a": 1}])
    out.close()
    with pytest.raises(OutputError, match="columns"):
        CsvOutput(path, fields=["z"]).open(point)


def test_csv_rollback_to_zero_forgets_the_header(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    out = CsvOutput(path)
    out.open(None)
    out.write([out.encode({"a": 1})])
    out.rollback("0")
    write(out, [{"b": 2}])
    out.close()
    assert read_csv(path) == [{"b": "2"}]


# -- SQLite -------------------------------------------------------------------------------


def test_sqlite_rows_columns_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    out = SqliteOutput(path)
    out.open(None)
    point = write(out, [{"a": 1, "b": "x"}, {"a": 2, "c": {"n": [1]}}, 7, {"A": True}])
    out.write([out.encode({"a": 99})])  # never committed
    out.close()
    rows = read_sqlite(path)
    assert [r["_seq"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["c"] == '{"n":[1]}'
    assert rows[2]["result"] == 7
    assert rows[3]["a"] == 1  # column names are case-insensitive in SQLite
    out = SqliteOutput(path)
    assert out.open(point) == "4"
    write(out, [{"a": 5, "big": 2**80}])
    out.close()
    assert read_sqlite(path)[-1]["big"] == str(2**80)


def test_sqlite_open_deletes_rows_after_the_point(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    out = SqliteOutput(path)
    out.open(None)
    point = write(out, [{"a": 1}])
    write(out, [{"a": 2}, {"a": 3}])  # committed to the table, not recorded by a journal
    out.close()
    out = SqliteOutput(path)
    out.open(point)
    out.close()
    assert [r["a"] for r in read_sqlite(path)] == [1]


def test_sqlite_refuses_a_foreign_table_and_reserved_names(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE results (x)")
    conn.execute("INSERT INTO results VALUES (1)")
    conn.commit()
    conn.close()
    with pytest.raises(OutputExists, match="not written by spindle"):
        SqliteOutput(path).open(None)
    out = SqliteOutput(path, table="other")
    out.open(None)
    with pytest.raises(UnwritableRecord, match="reserved"):
        out.encode({"_SEQ": 1})
    out.close()
    out = SqliteOutput(path)
    out.open(None, force=True)
    out.close()
    assert read_sqlite(path) == []


def test_sqlite_rows_without_a_journal_need_force(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    out = SqliteOutput(path)
    out.open(None)
    write(out, [{"a": 1}])
    out.close()
    with pytest.raises(OutputExists, match="already holds rows"):
        SqliteOutput(path).open(None)


def test_sqlite_missing_rows_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    out = SqliteOutput(path)
    out.open(None)
    write(out, [{"a": 1}])
    out.close()
    with pytest.raises(OutputCorrupt, match="ends at row 1"):
        SqliteOutput(path).open("5")


def test_sqlite_output_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"not a database at all, just some text" * 10)
    with pytest.raises(OutputError, match="SQLite database"):
        SqliteOutput(path).open(None)


def test_sqlite_rollback_drops_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    out = SqliteOutput(path)
    out.open(None)
    point = write(out, [{"a": 1}])
    out.write([out.encode({"a": 2, "b": 3})])
    out.rollback(point)
    write(out, [{"a": 4, "b": 5}])
    out.close()
    assert [(r["a"], r["b"]) for r in read_sqlite(path)] == [(1, None), (4, 5)]


# -- Parquet ------------------------------------------------------------------------------


def test_parquet_parts_and_recovery(tmp_path: Path) -> None:
    path = tmp_path / "o.parquet"
    out = ParquetOutput(path, min_rows=3, max_delay=3600)
    out.open(None)
    out.write([out.encode({"a": i}) for i in range(2)])
    assert out.commit() is None  # fewer than min_rows: held back
    out.write([out.encode({"a": 2})])
    assert out.commit() == "1"
    out.write([out.encode({"a": 3, "b": "x"})])
    assert out.commit(final=True) == "2"
    out.write([out.encode({"a": 4})])
    assert out.commit(final=True) == "3"
    out.close()
    (path / ".part-000003.parquet.tmp").write_bytes(b"junk")
    assert [r["a"] for r in read_parquet(path)] == [0, 1, 2, 3, 4]

    out = ParquetOutput(path)
    assert out.open("2") == "2"  # part 2 was renamed but never recorded
    out.close()
    assert sorted(os.listdir(path)) == ["part-000000.parquet", "part-000001.parquet"]
    assert read_parquet(path)[-1] == {"a": 3, "b": "x"}


def test_parquet_mixed_and_odd_values_become_json_text(tmp_path: Path) -> None:
    path = tmp_path / "o.parquet"
    out = ParquetOutput(path)
    out.open(None)
    write(out, [{"v": 1}, {"v": "x"}, {"v": object()}, 5])
    out.close()
    rows = read_parquet(path)
    assert [r["v"] for r in rows][:2] == ["1", "x"]
    assert rows[2]["v"].startswith('"<object')
    assert rows[3]["result"] == 5


def test_parquet_later_parts_take_the_first_schema(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "o.parquet"
    out = ParquetOutput(path)
    out.open(None)
    write(out, [{"a": 1.5, "b": "x"}])
    write(out, [{"a": 2}])
    out.close()
    schemas = []
    for part in sorted(path.glob("part-*")):
        with open(part, "rb") as f:
            schemas.append(pq.read_schema(f))
    assert schemas[0].equals(schemas[1])


def test_parquet_missing_part_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "o.parquet"
    out = ParquetOutput(path)
    out.open(None)
    write(out, [{"a": 1}])
    out.close()
    with pytest.raises(OutputCorrupt, match="part-000001"):
        ParquetOutput(path).open("2")
    with pytest.raises(OutputExists, match="Parquet parts"):
        ParquetOutput(path).open(None)
    single = tmp_path / "single.parquet"
    single.write_bytes(b"PAR1")
    with pytest.raises(OutputExists, match="is a file"):
        ParquetOutput(single).open(None)


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail, as if pyarrow were not installed.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(OutputError, match=r"install spindle\[parquet\]"):
        open_output(tmp_path / "o.parquet")
