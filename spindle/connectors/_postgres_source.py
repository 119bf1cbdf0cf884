"""PostgreSQL as a source: a query read in key order, or a queue table (``spindle[postgres]``).

Query mode, ``postgresql://HOST:PORT/DB?query=SQL&key=COLUMN[&page=N]``: a plain
:class:`~spindle.connectors.Source` (nothing to acknowledge) of the query's rows, each a
dict, read lazily in keyset pages, never more than a page in memory::

    SELECT k, row_to_json(r) FROM (<query>) r WHERE k IS NOT NULL ORDER BY k LIMIT page+1
    SELECT k, row_to_json(r) FROM (<query>) r WHERE k > $last    ORDER BY k LIMIT page+1
    ... until a page comes short; then the rows whose key is null, if any, in one pass

Each page is a statement of its own (autocommit): no transaction stays open, and a row
added during the run with a key beyond the last page read is read too. The key must be
unique: the row one past each page tells a key repeated across two pages, and a repeat is
a one-line error, since paging by it would skip rows. Index the key (a primary key does):
without one, every page evaluates and sorts the whole query. Rows whose key is null come
last, as they are; a journaled run fails them (``MissingKey``) rather than lose them.

The rows come as PostgreSQL's own JSON (``row_to_json``), parsed by orjson: numbers as
numbers (``numeric`` as a float unless it is whole and fits 64 bits; NaN and infinities
as strings), timestamps, dates and times as ISO 8601 strings, ``json``/``jsonb`` as
values, arrays as lists, ``bytea`` as its hex text (``\\x01ff``), intervals, UUIDs,
ranges and the rest as their text. Cast in the query for another form (``price::text``
keeps a decimal exact). Why: reading 200,000 rows of nine columns (below) in pages of
1,000, psycopg's Python values made JSON-able in Python went 98,000-112,000 rows/s at
8.1-9.4 µs of the client's CPU a row; ``row_to_json`` parsed by orjson 251,000-272,000
rows/s at 1.7-2.0 µs.

Resuming (``spindle map ... --journal J``): the journal keys each row by its key column
(that field of the row's dict) and its fingerprint names the URL, query included. A run
killed and started again skips the rows the journal has: :meth:`PostgresQuerySource.skip_done`
first reads only the keys, in pages of ``SKIP_PAGE``, asks the journal which are done, and
starts the row pages just before the first key still to run; the journal skips the done
rows after it (an unordered run finishes out of order, and a failure may be retried).
Measured (the table below, all 200,000 rows done): the command ran again in 0.96-1.20 s,
against 1.62-1.68 s with every row read whole and skipped by the journal's claims.

Queue-table mode, ``postgresql://HOST:PORT/DB?table=NAME[&consumer=NAME&lease=S]``: an
:class:`~spindle.connectors.AckSource` over a table of jobs::

    CREATE TABLE jobs (
        key text PRIMARY KEY,                 -- any type with a unique index; names the record
        input jsonb,                          -- the job's input (json, or text: --format)
        done boolean NOT NULL DEFAULT false,  -- its result or failure is recorded
        claimed_by text,                      -- the session that holds it (or held it)
        claimed_at timestamptz                -- when
    );
    CREATE INDEX ON jobs (key) WHERE NOT done;   -- for large tables: reads skip done rows

    read():  WITH c AS (SELECT key FROM jobs WHERE NOT done AND (claimed_by IS NULL
                          OR claimed_by NOT IN (the sessions alive: pg_stat_activity)
                          OR claimed_at < now() - lease)
                        ORDER BY key LIMIT n FOR UPDATE SKIP LOCKED)
             UPDATE jobs SET claimed_by = <this session>, claimed_at = now() ... RETURNING
             (its own transaction: no lock outlives the read)
    ack():   UPDATE jobs SET done = true WHERE key = ANY(keys)     (once durable)

A claim is a mark in the row, not a lock: ``claimed_by`` is the reading session's
``application_name`` (``spindle <consumer> <random>``, unique), so a row stays claimed
while that session lives, and comes back at once, to any reader, when it is gone (the
process died: its connection closed). ``lease=S`` also takes back rows claimed more than
S seconds ago by a session still alive (a run that hangs); by default claims last as long
as their session. A row given again is marked ``redelivered``. With ``drain`` the source
ends once no undone row is left unclaimed (rows other live readers hold are theirs).
Without it, a read that finds nothing waits up to ``wait`` seconds for a notification
on the channel named after the table (``NOTIFY jobs``, from a trigger or the producer)
before it looks again: rows added without one are seen within the wait (0.5 s).

Why marks, not a transaction held per read until the ack. Measured here (2-core VM
shared with other work, PostgreSQL 15 on the same machine, 100,000 rows, 1,000 a read,
nothing else done with them): claiming with ``FOR UPDATE SKIP LOCKED`` in a transaction
kept open until the ``UPDATE ... done`` and its ``COMMIT`` went 128,000-140,000 rows/s;
the claim mark above and a later ``UPDATE ... done`` (two writes a row) 61,000-64,000
rows/s with the partial index, 55,000-57,000 without. The transaction is faster, and a
crashed run's rows come back with its connection. But its row locks block any other
transaction that would mark those rows done, which rules out the exactly-once path below
(the sink's transaction would wait for the source's, which waits for the sink); it holds
a connection and an open transaction per batch in flight (up to 72 at the default bound
of a two-core machine), holding back VACUUM; and a batch acknowledged in parts must be
committed in pieces. Marks keep every transaction short, let another transaction settle
the rows, and still give a dead run's rows back at once (its session is gone): the price
is a second write per row, small beside the sink's (end to end below). The claim's
UPDATE finds its rows by ``key = ANY(ARRAY(SELECT key FROM c))``: written as ``UPDATE ...
FROM c``, PostgreSQL hashed the whole table at every read (56 ms a read at 100,000 rows,
against 12 ms; 35,000 rows/s in the measure above).

Exactly once into the same database. A :class:`~spindle.connectors.PostgresSink` given
this source's messages (a stream run's sink ``takes_messages``) finds the source on the
first message's token (``token.transactional``, the :class:`Transactional` protocol of
:mod:`._postgres`), asks it once whether the sink's connection reads the same database
(the claiming session is visible in the sink's ``pg_stat_activity`` with the sink's
``current_database()``), and if so marks the chunk's rows done inside the transaction
that writes their results::

    source.read() ── claim (committed) ─▶ pipeline ─▶ PostgresSink.write(messages, results)
                                                        BEGIN
                                                          results  ─COPY/INSERT─▶ results
                                                          failures ─INSERT─▶ results_failures
                                                          token.transactional.settle(cur):
                                                            UPDATE jobs SET done = true
                                                              WHERE key = ANY(chunk's keys)
                                                        COMMIT  (a result and its "done",
                                                                 or neither)
    source.ack(tokens) ◀── the run acknowledges ◀─────────────┘  (settled: nothing to do)

A crash before the COMMIT leaves the rows undone and claimed by a dead session: they run
again. After it, they are done and never given again. So each job's result (or failure)
is written once and its row marked done in the same commit: exactly once, not merely once
per key. Any other sink (a file, another database) is acknowledged after its commit, at
least once, as with a broker; the coupling is one attribute on a token and two methods.

Threads: :meth:`read` (the run's source thread) claims through one connection, which is
the claiming session; :meth:`ack` (the thread that writes the sink) marks through a
second; the sink settles through its own. ``lag()`` (rows not done) is counted by
``read`` or ``ack`` at most once a second (and by every ``ack`` once a drained source is
empty, so the figure at the end is exact), one count at a time, and read from any thread.

Measured (2-core VM shared with other work, load average 2-3; PostgreSQL 15 on the same
machine, Python 3.11; fresh interpreters, 3 runs each):

- query mode, 200,000 rows of nine columns (bigint key, text, numeric, timestamptz,
  date, boolean, text[], jsonb, uuid), the source alone (``sum(map(len, src.chunks()))``):
  203,000-244,000 rows/s in pages of 1,000 (median 232,000), 153,000-253,000 in pages of
  5,000, 1.9-2.2 µs of the client's CPU a row; through ``spindle map bench.work:tiny
  postgresql://...?query=SELECT * FROM t&key=id -o out.jsonl``, 102,000-142,000 rows/s
  (74,000-123,000 with ``--journal``);
- queue table into a PostgreSQL table of the same database, 100,000 jobs through ``spindle
  map bench.work:tiny postgresql://...?table=jobs -o postgresql://...?table=results
  --drain`` (a cpu stage, a worker per core), results and "done" in one transaction per
  chunk: 33,700-46,600 msg/s with the partial index (median of 6 runs 45,400; 2.7-3.6 s
  wall), 33,800-40,100 without (median 34,000). Acknowledging after the sink's commit
  instead (the same tables, the sink told they were apart) measured the same,
  44,300-46,300 (alternated with 44,900-46,600 settled): exactly once costs nothing here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from itertools import chain, pairwise
from operator import eq
from typing import TYPE_CHECKING, Any

import orjson

from .._errors import ConfigError
from .._failure import Failure
from ._base import AckSource, Message, Source
from ._errors import InputError
from ._postgres import (
    connect,
    key_is_unique,
    load_psycopg,
    one_line,
    process_name,
    table_columns,
    table_identifier,
)
from ._urls import Endpoint

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresQuerySource", "PostgresQueueSource", "open_postgres_source"]

#: Rows per page of a query.
PAGE = 1000
#: Keys per page when skipping the rows a journal has done.
SKIP_PAGE = 10_000
#: Seconds between two counts of the rows not done (a queue table's lag).
LAG_EVERY = 1.0
#: Seconds a count of a query's rows may take (a progress bar's total) before it is dropped.
COUNT_TIMEOUT = 2.0
#: The alias of the user's query in the statements around it.
_ROW = "_spindle_row"

#: What a queue table's columns must be: the types each may have.
_QUEUE_COLUMNS = {
    "key": None,  # any type, unique
    "input": ("jsonb", "json", "text", "character varying"),
    "done": ("boolean",),
    "claimed_by": ("text", "character varying"),
    "claimed_at": ("timestamp with time zone", "timestamp without time zone"),
}
_QUEUE_DDL = (
    "key text PRIMARY KEY, input jsonb, done boolean NOT NULL DEFAULT false, "
    "claimed_by text, claimed_at timestamptz"
)


def open_postgres_source(
    endpoint: Endpoint, *, fmt: str, key: str | None, drain: bool
) -> PostgresQuerySource | PostgresQueueSource:
    """The source a URL names: a query (``query``, ``key``, ``page``) or a queue table
    (``table``, ``consumer``, ``lease``)."""
    params = endpoint.params
    if "query" in params and "table" in params:
        raise ConfigError(
            f"{endpoint.name}: give either query= (rows read once, in key order) or "
            "table= (a queue table), not both"
        )
    if "table" in params:
        if key is not None:
            raise ConfigError(
                f"{endpoint.name}: a queue table's rows are keyed by its key column: "
                f"leave out --key {key}"
            )
        return PostgresQueueSource.open(endpoint, fmt=fmt, drain=drain)
    if "query" not in params:
        raise ConfigError(
            f"{endpoint.name}: a PostgreSQL input reads a query or a queue table: add "
            f"{'&' if '?' in endpoint.name else '?'}query=SQL&key=COLUMN or ?table=NAME "
            "to the URL"
        )
    return PostgresQuerySource.open(endpoint)


# -- query mode -------------------------------------------------------------------------


class PostgresQuerySource(Source):
    """The rows of ``query`` as dicts, in the order of its column ``key``, read a page
    of ``page`` rows at a time (see the module docstring)."""

    def __init__(
        self,
        conninfo: str,
        query: str,
        key: str,
        *,
        page: int = PAGE,
        name: str = "",
    ) -> None:
        if page < 1:
            raise ConfigError(f"{name or 'a query'}: page={page} must be at least 1")
        self._pg = load_psycopg()
        self.name = name or "postgresql query"
        self.query = query.strip().rstrip(";").rstrip()
        self.key = key
        self.page = page
        #: Rows read, pages read, rows skipped as done in a journal, rows with a null key.
        self.rows = 0
        self.pages = 0
        self.skipped = 0
        self.null_keys = 0
        self._still_to_run: Callable[[list[Any]], list[bool]] | None = None
        self._pages: Iterator[list[Any]] | None = None
        self._items: Iterator[Any] | None = None
        self.conn = connect(conninfo, self.name, InputError)
        try:
            self._prepare()
        except BaseException:
            self.conn.close()
            raise

    @classmethod
    def open(cls, endpoint: Endpoint) -> PostgresQuerySource:
        """The source a URL names (``query``, ``key``, ``page``)."""
        query = endpoint.need("query", "a query input needs its SQL")
        key = endpoint.need("key", "a query is read in the order of a unique column")
        page = endpoint.number("page", PAGE)
        return cls(
            endpoint.client_url,
            query,
            key,
            page=PAGE if page is None else int(page),
            name=endpoint.name,
        )

    def _prepare(self) -> None:
        sql = self._pg.sql
        # The user's SQL goes inside statements that take parameters: its % are literal.
        q = sql.SQL(self.query.replace("%", "%%"))
        r = sql.Identifier(_ROW)
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT * FROM ({}) {} LIMIT 0").format(q, r), ())
                columns = [d.name for d in cur.description or ()]
        except self._pg.Error as exc:
            raise InputError(f"{self.name}: the query fails: {one_line(exc)}") from None
        if self.key not in columns:
            raise ConfigError(
                f"{self.name}: key={self.key} is not a column of the query's rows (they "
                f"have {', '.join(columns) or 'none'}): name a unique column it returns"
            )
        k = sql.Identifier(_ROW, self.key)
        fields = {"q": q, "r": r, "k": k}

        def statement(text: str) -> Any:
            return sql.SQL(text).format(**fields)

        rows = "SELECT {k}, row_to_json({r})::text FROM ({q}) {r} "
        keys = "SELECT {k}, to_json({k})::text FROM ({q}) {r} "
        self._first = statement(rows + "WHERE {k} IS NOT NULL ORDER BY {k} LIMIT %s")
        self._after = statement(rows + "WHERE {k} > %s ORDER BY {k} LIMIT %s")
        self._keys_first = statement(keys + "WHERE {k} IS NOT NULL ORDER BY {k} LIMIT %s")
        self._keys_after = statement(keys + "WHERE {k} > %s ORDER BY {k} LIMIT %s")
        self._any_null = statement("SELECT EXISTS (SELECT 1 FROM ({q}) {r} WHERE {k} IS NULL)")
        self._nulls = statement("SELECT row_to_json({r})::text FROM ({q}) {r} WHERE {k} IS NULL")
        self._count = statement("SELECT count(*) FROM ({q}) {r}")

    # -- reading -------------------------------------------------------------------

    def skip_done(self, still_to_run: Callable[[list[Any]], list[bool]]) -> None:
        """Before the first page: skip the rows, in key order, for which
        ``still_to_run`` (given ``{key: value}`` dicts, a page of keys at a time) says
        False, up to the first it says True for (a resumed journal's done rows)."""
        self._still_to_run = still_to_run

    def chunkable(self) -> bool:
        return True  # a page never waits for rows that have not come

    def chunks(self, *, keep_bytes: bool = False) -> Iterator[list[Any]]:
        """The rows a page at a time."""
        if self._pages is None:
            self._pages = self._read()
        return self._pages

    def __next__(self) -> Any:
        if self._items is None:
            self._items = chain.from_iterable(self.chunks())
        return next(self._items)

    def _fetch(self, statement: Any, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        except self._pg.Error as exc:
            raise InputError(f"cannot read {self.name}: {one_line(exc)}") from None

    def _read(self) -> Iterator[list[Any]]:
        loads = orjson.loads
        n = self.page
        last: Any = None
        started = False
        if self._still_to_run is not None:
            last, started = self._skip(self._still_to_run)
        while True:
            if started:
                rows = self._fetch(self._after, (last, n + 1))
            else:
                rows = self._fetch(self._first, (n + 1,))
            more = len(rows) > n
            self._check_unique(rows)
            if more:
                del rows[n:]
            if not rows:
                break
            started = True
            last = rows[-1][0]
            self.pages += 1
            self.rows += len(rows)
            yield [loads(row[1]) for row in rows]
            if not more:
                break
        yield from self._null_key_rows()

    def _check_unique(self, rows: list[tuple[Any, ...]]) -> None:
        """A one-line error when two rows of a page (with the one past it) share a key:
        the next page starts after the last key, so its repeats would be skipped."""
        keys = [row[0] for row in rows]
        if not any(map(eq, keys, keys[1:])):
            return
        same = next(a for a, b in pairwise(keys) if a == b)
        raise InputError(
            f"{self.name}: key={self.key} is not unique (more than one row has {same!r}): "
            "rows read in its order would be skipped; key by a unique column"
        )

    def _null_key_rows(self) -> Iterator[list[Any]]:
        """The rows whose key is null, if any: in one pass of a server-side cursor,
        a page at a time."""
        row = self._fetch(self._any_null, ())
        if not (row and row[0][0]):
            return
        loads = orjson.loads
        try:
            with (
                self.conn.transaction(),
                self.conn.cursor(name="spindle_null_keys") as cur,
            ):
                cur.execute(self._nulls, ())
                while page := cur.fetchmany(self.page):
                    self.null_keys += len(page)
                    self.rows += len(page)
                    yield [loads(r[0]) for r in page]
        except self._pg.Error as exc:
            raise InputError(f"cannot read {self.name}: {one_line(exc)}") from None

    def _skip(self, still_to_run: Callable[[list[Any]], list[bool]]) -> tuple[Any, bool]:
        """Read keys only, up to the first one still to run; return the key to start
        after, and whether there is one (else start from the beginning)."""
        loads = orjson.loads
        last: Any = None
        started = False
        while True:
            if started:
                rows = self._fetch(self._keys_after, (last, SKIP_PAGE))
            else:
                rows = self._fetch(self._keys_first, (SKIP_PAGE,))
            if not rows:
                return last, started
            todo = still_to_run([{self.key: loads(r[1])} for r in rows])
            for i, run in enumerate(todo):
                if run:
                    self.skipped += i
                    if i:
                        return rows[i - 1][0], True
                    return last, started
            self.skipped += len(rows)
            last, started = rows[-1][0], True

    def count(self) -> int | None:
        """The query's rows, when PostgreSQL counts them within ``COUNT_TIMEOUT``."""
        if self.total is None:
            pg = self._pg
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute(f"SET LOCAL statement_timeout = {int(COUNT_TIMEOUT * 1000)}")
                    cur.execute(self._count, ())
                    row = cur.fetchone()
                self.total = int(row[0]) if row else None
            except pg.errors.QueryCanceled:
                return None  # too long to count: no total
            except pg.Error as exc:
                raise InputError(f"cannot read {self.name}: {one_line(exc)}") from None
        return self.total

    # -- what it shows -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Rows and pages read, rows skipped as done in a journal, rows with a null key."""
        return {
            "rows": self.rows,
            "pages": self.pages,
            "skipped": self.skipped,
            "null_keys": self.null_keys,
        }

    def __repr__(self) -> str:
        return (
            f"<PostgresQuerySource {self.name}: {self.rows:,} rows in {self.pages:,} "
            f"pages, {self.skipped:,} skipped>"
        )

    def close(self) -> None:
        try:
            if self._pages is not None and hasattr(self._pages, "close"):
                self._pages.close()  # ends a server-side cursor's transaction
        finally:
            self.conn.close()


# -- queue-table mode -------------------------------------------------------------------


class ClaimedRow:
    """The token of a queue table's message: its row's key, the source (for a sink
    that settles it in its own transaction), and whether that sink has."""

    __slots__ = ("key", "settled", "transactional")

    def __init__(self, key: str, transactional: PostgresQueueSource) -> None:
        self.key = key
        self.transactional = transactional
        self.settled = False

    def __repr__(self) -> str:
        return f"<ClaimedRow {self.key!r}{', settled' if self.settled else ''}>"


class PostgresQueueSource(AckSource):
    """The undone rows of a queue table, claimed by this reader, marked done once their
    results are durable (see the module docstring).

    ``consumer``: a name for people, in ``claimed_by`` (default: host and process).
    ``lease``: seconds after which a row claimed by a live session may be taken over
    (None: never; a dead session's rows come back at once either way). ``fmt``: how a
    ``text`` input column is read (``"jsonl"``: parsed as JSON; ``"text"``: as is).
    """

    def __init__(
        self,
        conninfo: str,
        table: str,
        *,
        consumer: str | None = None,
        lease: float | None = None,
        fmt: str = "jsonl",
        drain: bool = False,
        name: str = "",
    ) -> None:
        self._pg = load_psycopg()
        self.name = name or f"postgresql queue table {table}"
        self.table = table
        self.consumer = consumer or process_name()
        self.lease = lease
        self.fmt = fmt
        self.drain = drain
        #: Rows taken over from a session gone (or past its lease), and rows marked done
        #: here after the sink's commit, or by the sink in its own transaction.
        self.taken_over = 0
        self.marked = 0
        self.settled = 0
        self._lag: int | None = None
        self._lag_at = 0.0
        self._emptied = False  # a drain read found nothing left: the run is ending
        self._counting = threading.Lock()
        #: The claiming session's application_name: what ``claimed_by`` holds.
        self.claimer = ""
        self._parts = table_identifier(table, self.name)
        label = "".join(c if c.isascii() and c.isprintable() else "?" for c in self.consumer)
        # The session's application_name (at most 63 bytes) is the claims' owner: unique.
        wanted = f"spindle {label[:45]} {os.urandom(4).hex()}"
        self.conn = connect(conninfo, self.name, InputError, application_name=wanted)
        self.acker: psycopg.Connection[Any] | None = None
        try:
            self.acker = connect(conninfo, self.name, InputError)
            self._prepare()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, endpoint: Endpoint, *, fmt: str, drain: bool) -> PostgresQueueSource:
        """The source a URL names (``table``, ``consumer``, ``lease``)."""
        table = endpoint.need("table", "a queue table source needs its table")
        return cls(
            endpoint.client_url,
            table,
            consumer=endpoint.params.get("consumer") or None,
            lease=endpoint.number("lease", None),
            fmt=fmt,
            drain=drain,
            name=endpoint.name,
        )

    def _prepare(self) -> None:
        pg = self._pg
        sql = pg.sql
        shown = self.table
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT current_setting('application_name')")
                row = cur.fetchone()
                self.claimer = row[0] if row else ""
                quoted = sql.Identifier(*self._parts).as_string(self.conn)
                cur.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                    (quoted,),
                )
                found = cur.fetchone()
                if found is None:
                    raise InputError(
                        f"{self.name}: there is no table {shown} to read; a queue table is "
                        f"CREATE TABLE {shown} ({_QUEUE_DDL})"
                    )
                schema, relname = found
                columns = table_columns(cur, quoted)
                unique = key_is_unique(cur, quoted)
        except pg.Error as exc:
            raise InputError(f"{self.name}: {one_line(exc)}") from None
        problems = []
        for column, kinds in _QUEUE_COLUMNS.items():
            if column not in columns:
                problems.append(f"no column {column}")
            elif kinds is not None and columns[column][0] not in kinds:
                problems.append(f"{column} is {columns[column][0]}, not {kinds[0]}")
        if "key" in columns and not unique:
            problems.append("key is not its primary key (nor unique)")
        if "done" in columns and not columns["done"][1]:
            problems.append("done may be null (rows with a null done would never be read)")
        if problems:
            raise InputError(
                f"{self.name}: table {shown} is not a queue table: {'; '.join(problems)} "
                f"(a queue table has {_QUEUE_DDL}; ALTER TABLE {shown} to add what is "
                "missing)"
            )
        # A json or jsonb input is parsed; a text one is with --format jsonl.
        self._parse = columns["input"][0] in ("jsonb", "json") or self.fmt == "jsonl"
        t = sql.Identifier(schema, relname)
        key_type = sql.SQL(columns["key"][0])
        lease = (
            sql.SQL(" OR claimed_at < now() - {} * interval '1 second'").format(
                sql.Literal(float(self.lease))
            )
            if self.lease is not None
            else sql.SQL("")
        )
        # The UPDATE finds its rows by key = ANY(ARRAY(...)), an index scan: joined to
        # the CTE (UPDATE ... FROM c), the planner hashes the whole table every read.
        self._claim = sql.SQL(
            "WITH c AS (SELECT key, claimed_by FROM {t} WHERE NOT done AND ("
            "claimed_by IS NULL OR claimed_by NOT IN (SELECT application_name "
            "FROM pg_stat_activity WHERE application_name IS NOT NULL){lease}) "
            "ORDER BY key LIMIT %s FOR UPDATE SKIP LOCKED), "
            "u AS (UPDATE {t} SET claimed_by = %s, claimed_at = now() "
            "WHERE key = ANY(ARRAY(SELECT key FROM c)) RETURNING key, input) "
            "SELECT u.key::text, u.input::text, c.claimed_by IS NOT NULL "
            "FROM u JOIN c ON c.key = u.key ORDER BY u.key"
        ).format(t=t, lease=lease)
        self._done = sql.SQL(
            "UPDATE {t} SET done = true WHERE key = ANY(CAST(%s AS {kt}[])) AND NOT done"
        ).format(t=t, kt=key_type)
        self._undone = sql.SQL("SELECT count(*) FROM {} WHERE NOT done").format(t)
        self._channel = sql.Identifier(relname)
        try:
            if not self.drain:
                self.conn.execute(sql.SQL("LISTEN {}").format(self._channel))
            self._refresh_lag(self.conn)
        except pg.Error as exc:
            raise InputError(f"{self.name}: {one_line(exc)}") from None

    # -- reading -------------------------------------------------------------------

    def read(self, max_n: int, wait: float) -> list[Message]:
        try:
            if time.monotonic() >= self._lag_at + LAG_EVERY:
                self._refresh_lag(self.conn)
            messages = self._take(max_n)
            if messages:
                return messages
            if self.drain:
                self._emptied = True
                self._refresh_lag(self.conn)
                return []
            # Nothing to claim: wait for a NOTIFY on the table's channel, then look again.
            for _ in self.conn.notifies(timeout=wait, stop_after=1):
                pass
            return self._take(max_n)
        except self._pg.Error as exc:
            raise InputError(f"cannot read {self.name}: {one_line(exc)}") from None

    def _take(self, max_n: int) -> list[Message]:
        """Claim up to ``max_n`` rows (one short transaction); their messages."""
        with self.conn.cursor() as cur:
            cur.execute(self._claim, (max_n, self.claimer))
            rows = cur.fetchall()
        if not self.drain:
            for _ in self.conn.notifies(timeout=0):
                pass  # those that came meanwhile: the claim has seen their rows
        loads = orjson.loads
        parse = self._parse
        out: list[Message] = []
        again = 0
        for key, raw, redelivered in rows:
            body: Any = raw
            if raw is not None and parse:
                try:
                    body = loads(raw)
                except orjson.JSONDecodeError as exc:
                    why = f"row {key}: not valid JSON ({exc})"
                    body = Failure(raw, "MalformedInput", why, "", 0, "input")
            again += redelivered
            out.append(Message(body, key, ClaimedRow(key, self), redelivered))
        self.taken_over += again
        return out

    # -- acknowledging -------------------------------------------------------------

    def ack(self, tokens: list[Any]) -> None:
        keys = [t.key for t in tokens if not t.settled]
        self.settled += len(tokens) - len(keys)
        acker = self.acker
        assert acker is not None
        try:
            if keys:
                acker.execute(self._done, (keys,))
            # The last acknowledgements of a drained run leave the lag exact at its end.
            if self._emptied or time.monotonic() >= self._lag_at + LAG_EVERY:
                self._refresh_lag(acker)
        except self._pg.Error as exc:
            raise InputError(f"cannot acknowledge on {self.name}: {one_line(exc)}") from None
        self.marked += len(keys)

    def same_database(self, cursor: psycopg.Cursor[Any]) -> bool:
        """Whether ``cursor`` reads this table's database: this source's claiming
        session is one of its server's, on its ``current_database()``."""
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database())",
            (self.claimer,),
        )
        row = cursor.fetchone()
        return bool(row and row[0])

    def settle(self, cursor: psycopg.Cursor[Any], tokens: list[Any]) -> None:
        """Mark the rows of ``tokens`` done through ``cursor``, in the caller's open
        transaction (a sink's, that writes their results): :meth:`ack` then skips them."""
        cursor.execute(self._done, ([t.key for t in tokens],))
        for t in tokens:
            t.settled = True

    # -- what it shows -------------------------------------------------------------

    def _refresh_lag(self, conn: psycopg.Connection[Any]) -> None:
        """Count the rows not done, through ``conn`` (the calling thread's). One count at
        a time: the later count, which has seen more commits, is the one kept."""
        with self._counting:
            self._lag_at = time.monotonic()
            with conn.cursor() as cur:
                cur.execute(self._undone)
                row = cur.fetchone()
            self._lag = int(row[0]) if row else None

    def lag(self) -> int | None:
        """Rows not done (claimed ones among them), counted at most once a second."""
        return self._lag

    def stats(self) -> dict[str, Any]:
        return {
            "consumer": self.claimer,
            "taken_over": self.taken_over,
            "marked": self.marked,
            "settled": self.settled,
            "lease": self.lease,
        }

    def __repr__(self) -> str:
        return (
            f"<PostgresQueueSource {self.name}: {self.taken_over:,} taken over, "
            f"{self.marked + self.settled:,} done, lag {self._lag}>"
        )

    def close(self) -> None:
        try:
            if self.acker is not None:
                self.acker.close()
        finally:
            self.conn.close()
