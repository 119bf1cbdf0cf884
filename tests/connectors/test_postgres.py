"""PostgreSQL as a sink against the local server: each key once, a chunk per transaction."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import spindle
from spindle import ConfigError
from spindle.connectors import Message, OutputError, PostgresSink, open_sink
from spindle.connectors._keys import content_key

from ._servers import postgres_url


def rows(pg: Any, table: str) -> dict[str, tuple[Any, Any]]:
    return {k: (i, r) for k, i, r in pg.execute(f"SELECT key, input, result FROM {table}")}


def failures(pg: Any, table: str) -> dict[str, tuple[Any, ...]]:
    found = pg.execute(
        f"SELECT key, input, error, message, traceback, attempts FROM {table}_failures"
    )
    return {r[0]: r[1:] for r in found}


def fail(item: Any, error: str = "ValueError") -> spindle.Failure:
    return spindle.Failure(
        item, error, "bad item", "Traceback (most recent call last): ...", 2, "f"
    )


def messages(*pairs: tuple[str, Any]) -> list[Message]:
    return [Message(body, key, key) for key, body in pairs]


def test_tables_are_made_and_each_key_is_written_once(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        assert isinstance(sink, PostgresSink)
        sink.write(messages(("a", {"n": 1}), ("b", {"n": 2})), [10, fail({"n": 2})])
        sink.write(messages(("a", {"n": 1}), ("c", "text")), [99, [1, "x"]])  # "a" again
        assert sink.written == 3 and sink.failed == 1 and sink.duplicates == 1
    assert rows(pg, table) == {"a": ({"n": 1}, 10), "c": ("text", [1, "x"])}
    ((inp, error, message, _tb, attempts),) = failures(pg, table).values()
    assert inp == {"n": 2} and error == "ValueError" and message == "bad item" and attempts == 2
    columns = pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    assert columns == [("key", "text"), ("input", "jsonb"), ("result", "jsonb")]


def test_a_key_ends_in_one_table(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        sink.write(messages(("k", 1), ("j", 2)), [fail(1), 20])  # k fails, j succeeds
    with open_sink(postgres_url(table)) as sink:  # a later run: k succeeds, j fails now
        sink.write(messages(("k", 1), ("j", 2)), [10, fail(2, "Timeout")])
    assert rows(pg, table) == {"k": (1, 10), "j": (2, 20)}
    assert failures(pg, table) == {}


def test_the_latest_failure_of_a_key_is_kept(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        sink.write(messages(("k", 1)), [fail(1, "ValueError")])
        sink.write(messages(("k", 1), ("k", 1)), [fail(1, "Timeout"), fail(1, "Timeout")])
    assert [f[1] for f in failures(pg, table).values()] == ["Timeout"]


def test_a_record_postgres_refuses_fails_alone(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        sink.write(
            messages(("ok", 1), ("nul", 2), ("ok2", "a\x00b")),
            [1, "has a \x00 in it", 3],
        )
        assert sink.written == 1 and sink.failed == 2
    assert rows(pg, table) == {"ok": (1, 1)}
    found = failures(pg, table)
    assert found["nul"][1] == "Unwritable" and "PostgreSQL refused" in found["nul"][2]
    assert found["ok2"][1] == "Unwritable" and "\x00" not in found["ok2"][0]


def test_plain_items_are_keyed_by_content_or_by_field(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        sink.write(["x", "y", "x"], [1, 2, 1])
    assert set(rows(pg, table)) == {content_key("x"), content_key("y")}
    pg.execute(f"DROP TABLE {table}, {table}_failures")
    with open_sink(postgres_url(table), key="id") as sink:
        sink.write([{"id": "a"}, {"id": 5}, {"no": 1}], [1, 2, 3])
    assert set(rows(pg, table)) == {"a", "5"}
    (f,) = failures(pg, table).values()
    assert f[1] == "MissingKey"


def test_unserializable_results_fail_alone(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        sink.write(messages(("a", 1), ("b", 2)), [object(), 2])
    assert rows(pg, table) == {"b": (2, 2)}
    assert failures(pg, table)["a"][1] == "Unserializable"


def test_a_table_that_does_not_fit_is_one_line_naming_its_columns(pg: Any, table: str) -> None:
    pg.execute(f"CREATE TABLE {table} (key integer, input text, extra int NOT NULL)")
    with pytest.raises(OutputError) as info:
        open_sink(postgres_url(table))
    text = str(info.value)
    assert "\n" not in text and f"table {table} does not fit" in text
    for problem in (
        "key is integer, not text",
        "input is text, not jsonb",
        "no column result",
        "key is not its primary key",
        "extra is NOT NULL without a default",
    ):
        assert problem in text


def test_a_table_with_more_columns_with_defaults_fits(pg: Any, table: str) -> None:
    pg.execute(
        f"CREATE TABLE {table} (key varchar(100) PRIMARY KEY, input json, result jsonb, "
        "at timestamptz NOT NULL DEFAULT now())"
    )
    with open_sink(postgres_url(table)) as sink:
        sink.write(messages(("a", 1)), [2])
    assert pg.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)


def test_a_url_without_a_table_names_it() -> None:
    with pytest.raises(ConfigError, match=r"add \?table=NAME"):
        open_sink("postgresql://postgres@127.0.0.1:5432/test")


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(OutputError) as info:
        open_sink("postgresql://spindle:hunter2@127.0.0.1:1/test?table=t")
    text = str(info.value)
    assert "hunter2" not in text and "\n" not in text
    assert text.startswith("cannot connect to postgresql://spindle:***@127.0.0.1:1/test?table=t")


def test_a_missing_client_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"pip install 'spindle\[postgres\]'"):
        open_sink("postgresql://127.0.0.1:5432/test?table=t")


def test_odd_keys_and_text_survive_copy(pg: Any, table: str) -> None:
    odd = ["tab\there", "back\\slash", "new\nline", "cr\rx", "plain", "uni\u2028code"]
    texts = ['quote " and \\ backslash', "tab\t and newline\n", "\\N", "\u00e9\U0001f600"]
    with open_sink(postgres_url(table)) as sink:
        sink.write(messages(*((k, k) for k in odd)), list(range(len(odd))))
        sink.write(messages(*((f"t{i}", t) for i, t in enumerate(texts))), texts)
    got = rows(pg, table)
    assert {k: v for k, v in got.items() if k in odd} == {k: (k, i) for i, k in enumerate(odd)}
    assert [got[f"t{i}"] for i in range(len(texts))] == [(t, t) for t in texts]


def test_a_redelivered_chunk_and_a_conflicting_copy_skip_known_keys(pg: Any, table: str) -> None:
    with open_sink(postgres_url(table)) as sink:
        assert isinstance(sink, PostgresSink)
        sink.write(messages(("a", 1), ("b", 2)), [1, 2])
        again = [Message(2, "b", "b", redelivered=True), Message(3, "c", "c")]
        sink.write(again, [20, 3])  # a redelivered message: the ON CONFLICT way at once
        assert sink.duplicates == 1 and sink._direct
        sink.write(messages(("a", 1), ("d", 4)), [10, 4])  # not marked, "a" is there
        assert sink.duplicates == 2 and not sink._direct  # rolled back, written again
        sink.write(messages(("e", 5)), [5])
    assert rows(pg, table) == {"a": (1, 1), "b": (2, 2), "c": (3, 3), "d": (4, 4), "e": (5, 5)}
