"""PostgreSQL as a sink: each key once, a chunk per transaction (``spindle[postgres]``).

::

    write(chunk) ── one transaction ──────────────────────────────────────────────┐
      results  ─COPY─▶ t                   (no message redelivered: keys are new)
               or, if that meets a key already there, or a message was redelivered:
               ─COPY─▶ spindle_rows (temp) ─INSERT INTO t ... ON CONFLICT (key) DO NOTHING
      failures ─COPY─▶ spindle_failed (temp) ─INSERT INTO t_failures ... ON CONFLICT (key)
                         DO UPDATE (the latest failure), unless t holds the key already
      keys that succeeded ─DELETE FROM t_failures (only once failures may exist)
      messages of a queue table in this database ─UPDATE queue SET done (settled)
    COMMIT ── returns: the chunk is durable, its messages may be acknowledged ─────┘

Tables, created if missing: ``<table> (key text primary key, input jsonb, result
jsonb)`` and ``<table>_failures (key text primary key, input jsonb, error text, message
text, traceback text, attempts integer)``. A key ends in exactly one of them: a message
delivered again after a crash finds its key taken and changes nothing; one that failed
before and succeeds now leaves the failures table. A table that exists with columns that do
not fit is a one-line error naming them.

Exactly once from a queue table. When a chunk's messages come from a source that can be
settled in a transaction (the first message's ``token.transactional``, a
:class:`Transactional`: a queue table, :mod:`._postgres_source`) and that source's
table is in this sink's database (asked once per source), the sink marks their rows done
in the chunk's own transaction, so a result and its row's "done" commit together; the
source's acknowledgement then has nothing left to do (``settled`` in the sink's ``stats()``).

A record PostgreSQL refuses (a ``\\u0000`` in a string, which ``jsonb`` cannot hold) would
make the whole chunk fail at every delivery: the chunk is then written again row by row,
each in a savepoint, and a refused row becomes a failure (``Unwritable``) in its place.

Why psycopg 3's COPY into a temporary table, then one INSERT: measured here (2-core VM,
PostgreSQL 15 on the same machine, 200,000 rows of a short JSON input and result, 1,000
rows a transaction, each a fresh interpreter), the client's CPU per row, which competes
with the run's workers: psycopg COPY 0.8 µs, asyncpg ``copy_records_to_table`` 0.8 µs,
asyncpg ``executemany`` 1.2 µs, asyncpg ``unnest`` arrays 1.5 µs, psycopg ``executemany``
(pipeline mode) 6-7 µs, psycopg ``unnest`` 7 µs; rows per second on the loaded machine
(shared with other work, so spread 20-50 %): psycopg COPY 41,000-111,000, asyncpg COPY
49,000-90,000, asyncpg unnest 41,000-78,000, asyncpg executemany 40,000-61,000, psycopg
executemany 35,000-43,000. psycopg's COPY is as fast as the best, and it is synchronous:
the thread that writes the sink calls it directly, where asyncpg needs an event loop
of its own.

Why COPY straight into the table first: with 5,000 rows a transaction, PostgreSQL took
200,000 rows at 396,000-447,000 rows/s by COPY into the table against 231,000-246,000
rows/s by COPY into a temporary table and INSERT ... ON CONFLICT, and on a machine of two
cores the server's CPU is taken from the run. A chunk with a redelivered message goes the
second way at once; a COPY that meets a key already in the table (a file run again,
another writer) is rolled back and the chunk written the second way, which the sink then
keeps to. The rows go as one block of COPY text (0.2 µs a row on the client, against
0.4 µs for psycopg's ``write_row``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .._errors import ConfigError
from .._failure import Failure
from ._base import Message, Sink
from ._errors import InputError, OutputError
from ._json import JSON_OPTIONS, json_default
from ._keys import KeyFunction, content_key, field_key, keyed
from ._urls import Endpoint

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PostgresSink",
    "Transactional",
    "connect",
    "key_is_unique",
    "load_psycopg",
    "one_line",
    "process_name",
    "table_columns",
    "table_identifier",
]

CONNECT_TIMEOUT = 10
_RESULT_COLUMNS = {"key": "text", "input": "jsonb", "result": "jsonb"}
_FAILURE_COLUMNS = {
    "key": "text",
    "input": "jsonb",
    "error": "text",
    "message": "text",
    "traceback": "text",
    "attempts": "integer",
}
#: The column types each column may have in an existing table.
_FITS = {
    "text": ("text", "character varying"),
    "jsonb": ("jsonb", "json"),
    "integer": ("integer", "bigint", "smallint"),
}


def load_psycopg() -> Any:
    """The psycopg module; a one-line ConfigError naming the extra when it is missing."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "PostgreSQL needs the psycopg client: pip install 'spindle[postgres]'"
        ) from None
    return psycopg


def one_line(exc: BaseException) -> str:
    """The first line of a client's error (PostgreSQL's own adds context lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def process_name() -> str:
    """This process, for people: its host's name and its id."""
    return f"{socket.gethostname() or 'localhost'}:{os.getpid()}"


def connect(
    conninfo: str,
    name: str,
    role: type[InputError] | type[OutputError],
    *,
    application_name: str | None = None,
) -> psycopg.Connection[Any]:
    """A connection in autocommit to ``conninfo``: one that cannot be made is a one-line
    ``role`` error naming ``name`` (the URL without its password). Its session's
    ``application_name`` is ``spindle HOST:PID`` unless given."""
    pg = load_psycopg()
    try:
        conn: psycopg.Connection[Any] = pg.connect(
            conninfo,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=application_name or f"spindle {process_name()}"[:63],
        )
    except pg.Error as exc:
        raise role(f"cannot connect to {name}: {one_line(exc)}") from None
    return conn


def table_columns(cur: psycopg.Cursor[Any], name: str) -> dict[str, tuple[str, bool, bool]]:
    """The columns of the table ``name`` (quoted as SQL): for each, its type, whether it
    is NOT NULL, and whether it has a default (or is an identity or generated)."""
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, NULL), a.attnotnull, "
        "a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (name,),
    )
    return {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}


def key_is_unique(cur: psycopg.Cursor[Any], name: str) -> bool:
    """Whether the column ``key`` of the table ``name`` is its primary key, or unique."""
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1 "
        "AND i.indpred IS NULL AND a.attname = 'key')",
        (name,),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def table_identifier(table: str, name: str) -> list[str]:
    """The parts of ``table`` (``name`` or ``schema.name``); a ConfigError naming the
    URL ``name`` when it is not a table's name."""
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"{name}: table={table!r} is not a table name")
    return parts


class Transactional(Protocol):
    """A source whose messages a :class:`PostgresSink` settles in its own transaction.

    The sink looks for it on the first message's token (``token.transactional``): when
    the source's rows live in the sink's database, the sink calls :meth:`settle` inside
    the transaction that writes the chunk's results, so a result and its row's "done"
    commit together, and the source's ``ack`` finds nothing left to do (see
    :mod:`._postgres_source`).
    """

    def same_database(self, cursor: psycopg.Cursor[Any]) -> bool:
        """Whether ``cursor``'s connection is to the database the source reads."""
        ...

    def settle(self, cursor: psycopg.Cursor[Any], tokens: list[Any]) -> None:
        """Mark the messages of ``tokens`` done through ``cursor``, inside the caller's
        open transaction."""
        ...


def _scrubbed(record: tuple[str, str, str, str, str, int]) -> tuple[str, str, str, str, str, int]:
    """A failure record PostgreSQL can hold: no NUL character in its text, nor the JSON
    escape of one in its input (kept as the text of the escape)."""
    key, item, error, message, tb, attempts = record

    def scrub(text: str) -> str:
        return text.replace("\x00", "\\0")

    item = scrub(item).replace("\\u0000", "\\\\u0000")
    return scrub(key), item, scrub(error), scrub(message), scrub(tb), attempts


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_text(rows: list[tuple[str, str, str]]) -> str:
    """``rows`` as the text of COPY ... FROM STDIN: tab between columns, a line a row,
    backslashes doubled. JSON from orjson holds no tab, newline or carriage return (it
    escapes them), so only a key may need more, and only odd keys do."""
    if all(map(str.isprintable, (r[0] for r in rows))):
        block = "".join([f"{k}\t{i}\t{r}\n" for k, i, r in rows])
        return block.replace("\\", "\\\\") if "\\" in block else block
    esc = _COPY_ESCAPES
    return "".join([f"{k.translate(esc)}\t{_doubled(i)}\t{_doubled(r)}\n" for k, i, r in rows])


def _doubled(text: str) -> str:
    return text.replace("\\", "\\\\")


def _json(value: Any) -> str:
    return orjson.dumps(value, default=json_default, option=JSON_OPTIONS).decode()


def _input_json(item: Any) -> str:
    try:
        return _json(item)
    except TypeError:
        return _json(repr(item))


class PostgresSink(Sink):
    """Writes results to ``table`` and failures to ``<table>_failures``, a chunk per
    transaction, each key once (see the module docstring). ``key``: how plain items (not
    messages) are keyed."""

    takes_messages = True

    def __init__(
        self,
        conninfo: str,
        table: str,
        *,
        key: KeyFunction = content_key,
        name: str = "",
    ) -> None:
        self._pg = load_psycopg()
        self.name = name or f"postgresql table {table}"
        self.table = table
        self._key = key
        self.written = 0
        self.failed = 0
        #: Results whose key was in the table already (delivered again).
        self.duplicates = 0
        #: Results whose rows the source's table marked done in the same transaction.
        self.settled = 0
        #: Whether each transactional source met reads this database (asked once each).
        self._same: dict[Transactional, bool] = {}
        self.conn = connect(conninfo, self.name, OutputError)
        try:
            self._prepare()
        except BaseException:
            self.conn.close()
            raise

    @classmethod
    def open(cls, endpoint: Endpoint, *, key: str | None) -> PostgresSink:
        """The sink a URL names (``table``)."""
        table = endpoint.need("table", "a PostgreSQL output needs the table to write")
        return cls(
            endpoint.client_url,
            table,
            key=content_key if key is None else field_key(key),
            name=endpoint.name,
        )

    # -- the tables ----------------------------------------------------------------

    def _prepare(self) -> None:
        sql = self._pg.sql
        parts = table_identifier(self.table, self.name)
        failures = [*parts[:-1], parts[-1] + "_failures"]
        self._t = sql.Identifier(*parts)
        self._f = sql.Identifier(*failures)
        try:
            self._ensure(self._t, self.table, _RESULT_COLUMNS)
            self._ensure(self._f, ".".join(failures), _FAILURE_COLUMNS)
            with self.conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS spindle_rows "
                    "(key text, input jsonb, result jsonb) ON COMMIT DELETE ROWS"
                )
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS spindle_failed (key text, input jsonb, "
                    "error text, message text, traceback text, attempts integer) "
                    "ON COMMIT DELETE ROWS"
                )
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(self._f))
                row = cur.fetchone()
                self._failures_may_exist = bool(row and row[0])
        except self._pg.Error as exc:
            raise OutputError(f"{self.name}: {one_line(exc)}") from None
        t, f = self._t, self._f
        self._insert_rows = sql.SQL(
            "INSERT INTO {} (key, input, result) SELECT key, input, result FROM spindle_rows "
            "ON CONFLICT (key) DO NOTHING"
        ).format(t)
        self._insert_failed = sql.SQL(
            "INSERT INTO {f} (key, input, error, message, traceback, attempts) "
            "SELECT DISTINCT ON (s.key) s.key, s.input, s.error, s.message, s.traceback, "
            "s.attempts FROM spindle_failed s WHERE NOT EXISTS "
            "(SELECT 1 FROM {t} r WHERE r.key = s.key) "
            "ON CONFLICT (key) DO UPDATE SET input = EXCLUDED.input, error = EXCLUDED.error, "
            "message = EXCLUDED.message, traceback = EXCLUDED.traceback, "
            "attempts = EXCLUDED.attempts"
        ).format(f=f, t=t)
        self._clear_failed = sql.SQL("DELETE FROM {} WHERE key = ANY(%s)").format(f)
        self._copy_rows = sql.SQL("COPY {} (key, input, result) FROM STDIN").format(t)
        self._direct = True
        self._insert_row = sql.SQL(
            "INSERT INTO {} (key, input, result) VALUES (%s, %s::jsonb, %s::jsonb) "
            "ON CONFLICT (key) DO NOTHING"
        ).format(t)
        self._insert_one_failed = sql.SQL(
            "INSERT INTO spindle_failed VALUES (%s, %s::jsonb, %s, %s, %s, %s)"
        )

    def _ensure(self, table: Any, shown: str, columns: dict[str, str]) -> None:
        """Create ``table`` (``shown`` in messages) if missing; else check that its
        columns fit ``columns``."""
        sql = self._pg.sql
        name = table.as_string(self.conn)
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
            row = cur.fetchone()
            if not (row and row[0]):
                spec = ", ".join(
                    f"{c} {kind}{' PRIMARY KEY' if c == 'key' else ''}"
                    for c, kind in columns.items()
                )
                with contextlib.suppress(self._pg.errors.UniqueViolation):
                    # Two runs creating it at once: one wins, the other finds it made.
                    cur.execute(
                        sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + spec + ")").format(table)
                    )
                return
            found = table_columns(cur, name)
            unique = key_is_unique(cur, name)
        problems = []
        for column, kind in columns.items():
            if column not in found:
                problems.append(f"no column {column}")
            elif found[column][0] not in _FITS[kind]:
                problems.append(f"{column} is {found[column][0]}, not {kind}")
        if "key" in found and not unique:
            problems.append("key is not its primary key (nor unique)")
        for column, (_, not_null, has_default) in found.items():
            if column not in columns and not_null and not has_default:
                problems.append(f"{column} is NOT NULL without a default")
        if problems:
            want = ", ".join(
                f"{c} {k}{' primary key' if c == 'key' else ''}" for c, k in columns.items()
            )
            raise OutputError(
                f"{self.name}: table {shown} does not fit: {'; '.join(problems)} "
                f"(spindle writes {want}): name another table, or change this one"
            )

    # -- writing -------------------------------------------------------------------

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        again = bool(inputs) and type(inputs[0]) is Message and any(m.redelivered for m in inputs)
        keys, items, values = keyed(inputs, values, self._key)
        rows: list[tuple[str, str, str]] = []
        failed: list[tuple[str, str, str, str, str, int]] = []
        for key, item, value in zip(keys, items, values, strict=True):
            if type(value) is not Failure:
                try:
                    rows.append((key, _input_json(item), _json(value)))
                    continue
                except TypeError as exc:
                    value = Failure(
                        item,
                        "Unserializable",
                        f"the result cannot be written as JSON ({exc})",
                        "",
                        1,
                        "output",
                    )
            failed.append(
                (
                    key,
                    _input_json(item),
                    value.error,
                    value.message,
                    value.traceback,
                    value.attempts,
                )
            )
        pg = self._pg
        try:
            settle = self._settler(inputs)
            try:
                direct = self._direct and not again
                try:
                    inserted = self._transaction(rows, failed, direct, settle)
                except pg.errors.UniqueViolation:
                    if not direct:
                        raise
                    self._direct = False  # keys here already: the safe way from now on
                    inserted = self._transaction(rows, failed, False, settle)
            except pg.DataError:
                inserted = self._transaction_row_by_row(rows, failed, settle)
        except pg.Error as exc:
            raise OutputError(f"cannot write to {self.name}: {one_line(exc)}") from None
        self.duplicates += len(rows) - inserted
        self.written += len(rows)
        self.failed += len(failed)
        if settle is not None:
            self.settled += len(inputs)

    def _settler(self, inputs: list[Any]) -> Callable[[Any], None] | None:
        """What settles a stream run's messages inside the chunk's transaction, when
        their source is :class:`Transactional` and reads this database; else None (the
        run acknowledges them after the commit)."""
        if not inputs or type(inputs[0]) is not Message:
            return None
        source: Transactional | None = getattr(inputs[0].token, "transactional", None)
        if source is None:
            return None
        same = self._same.get(source)
        if same is None:
            with self.conn.cursor() as cur:
                same = self._same[source] = source.same_database(cur)
        if not same:
            return None
        tokens = [m.token for m in inputs]
        return lambda cur: source.settle(cur, tokens)

    def _transaction(
        self,
        rows: list[tuple[str, str, str]],
        failed: list[tuple[str, str, str, str, str, int]],
        direct: bool,
        settle: Callable[[Any], None] | None = None,
    ) -> int:
        """Write the chunk in one transaction (``direct``: COPY into the table), the
        source's rows settled in it when ``settle`` is given; return how many results
        were new."""
        inserted = 0
        with self.conn.transaction(), self.conn.cursor() as cur:
            if rows:
                block = _copy_text(rows)
                if direct:
                    with cur.copy(self._copy_rows) as copy:
                        copy.write(block)
                    inserted = len(rows)
                else:
                    with cur.copy("COPY spindle_rows (key, input, result) FROM STDIN") as copy:
                        copy.write(block)
                    cur.execute(self._insert_rows)
                    inserted = cur.rowcount
                if self._failures_may_exist:
                    cur.execute(self._clear_failed, ([r[0] for r in rows],))
            if failed:
                with cur.copy("COPY spindle_failed FROM STDIN") as copy:
                    for record in failed:
                        copy.write_row(record)
                cur.execute(self._insert_failed)
                self._failures_may_exist = True
            if settle is not None:
                settle(cur)
        return inserted

    def _transaction_row_by_row(
        self,
        rows: list[tuple[str, str, str]],
        failed: list[tuple[str, str, str, str, str, int]],
        settle: Callable[[Any], None] | None = None,
    ) -> int:
        """The chunk again, a row per savepoint: a row PostgreSQL refuses becomes a
        failure in its place, and a failure it refuses is kept with its input as text."""
        pg = self._pg
        inserted = 0
        failed = list(failed)
        with self.conn.transaction(), self.conn.cursor() as cur:
            for key, item, result in rows:
                try:
                    with self.conn.transaction():
                        cur.execute(self._insert_row, (key, item, result))
                        inserted += cur.rowcount
                except pg.DataError as exc:
                    message = f"PostgreSQL refused the record: {one_line(exc)}"
                    failed.append((key, item, "Unwritable", message, "", 1))
                    self.written -= 1  # counted as a failure instead
                    self.failed += 1
            if inserted and self._failures_may_exist:
                cur.execute(self._clear_failed, ([r[0] for r in rows],))
            for record in failed:
                try:
                    with self.conn.transaction():
                        cur.execute(self._insert_one_failed, record)
                except pg.DataError:
                    with self.conn.transaction():
                        cur.execute(self._insert_one_failed, _scrubbed(record))
            cur.execute(self._insert_failed)
            self._failures_may_exist = True
            if settle is not None:
                settle(cur)
        return inserted

    def stats(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates, "settled": self.settled}

    def close(self) -> None:
        self.conn.close()
