"""Connectors: where a run's items come from and where its results go.

Two small interfaces (:mod:`._base`): a :class:`Source` gives items (a file of lines,
standard input, an in-memory iterable), a :class:`Sink` takes chunks of results beside
their inputs. Each has an in-memory fake (:class:`MemorySource`, :class:`MemorySink`).

- Without a journal, results go to a :class:`RecordWriter` (JSON lines, as they come).
- With a journal, results go to the journal's sink, which records each one and writes it
  through an :class:`Output`: JSON lines, CSV, an SQLite table, or Parquet (the optional
  ``spindle[parquet]`` extra), plus the failures file. Pick one by extension or by name
  with :func:`open_output`.

How a committed output survives a crash (details in ``docs/journal.md`` and each module):

* every output can :meth:`~Output.commit` to a *point* (a byte offset for files, the last
  row number for SQLite, the number of part files for Parquet) once its data is durable;
* the journal records that point in the same SQLite transaction that marks the items
  done, after the output's commit, so the journal never points past durable data;
* on resume the journal hands the point back to :meth:`~Output.open`, which cuts the
  output back to it: a torn last line, or records whose items were not marked done, go,
  and those items run again. Each distinct key therefore ends up exactly once.

Brokers and databases (``docs/architecture.md``, "Streams: brokers and databases"): an
:class:`AckSource` gives :class:`Message` objects that a :class:`StreamRun` acknowledges
only once their results are durable in the sink. Redis Streams (:class:`RedisStreamSource`,
:class:`RedisStreamSink`; ``spindle[redis]``), RabbitMQ queues (:class:`RabbitSource`,
:class:`RabbitSink`; ``spindle[rabbitmq]``), NATS JetStream (:class:`NatsSource`,
:class:`NatsSink`; ``spindle[nats]``) and PostgreSQL (:class:`PostgresSink`,
``spindle[postgres]``; as a source, a query read in key order,
:class:`PostgresQuerySource`, or a queue table, :class:`PostgresQueueSource`), opened from
URLs with :func:`open_source` and :func:`open_sink` (:func:`acknowledges` tells the two
kinds of source apart);
the in-memory fake is :class:`MemoryAckSource`; a file takes a stream's results through
:class:`DurableLines`. The clients are imported only when a connector is opened.

Every error here derives from :class:`OutputError` or :class:`InputError`.
"""

from ._base import AckSource as AckSource
from ._base import Message as Message
from ._base import Sink as Sink
from ._base import Source as Source
from ._durable import DurableLines as DurableLines
from ._errors import InputError as InputError
from ._errors import OutputCorrupt as OutputCorrupt
from ._errors import OutputError as OutputError
from ._errors import OutputExists as OutputExists
from ._errors import UnwritableRecord as UnwritableRecord
from ._files import AppendFileOutput as AppendFileOutput
from ._files import CsvOutput as CsvOutput
from ._files import FailuresOutput as FailuresOutput
from ._files import JsonlOutput as JsonlOutput
from ._formats import FORMATS as FORMATS
from ._formats import format_for as format_for
from ._formats import open_output as open_output
from ._json import JsonLine as JsonLine
from ._json import encode_line as encode_line
from ._json import json_default as json_default
from ._lines import Items as Items
from ._lines import Lines as Lines
from ._lines import read_items as read_items
from ._memory import MemorySink as MemorySink
from ._memory import MemorySource as MemorySource
from ._memory_ack import MemoryAckSource as MemoryAckSource
from ._nats import NatsSink as NatsSink
from ._nats import NatsSource as NatsSource
from ._open import acknowledges as acknowledges
from ._open import open_sink as open_sink
from ._open import open_source as open_source
from ._output import Output as Output
from ._parquet import ParquetOutput as ParquetOutput
from ._postgres import PostgresSink as PostgresSink
from ._postgres_source import PostgresQuerySource as PostgresQuerySource
from ._postgres_source import PostgresQueueSource as PostgresQueueSource
from ._rabbitmq import RabbitSink as RabbitSink
from ._rabbitmq import RabbitSource as RabbitSource
from ._redis import RedisStreamSink as RedisStreamSink
from ._redis import RedisStreamSource as RedisStreamSource
from ._sqlite import SqliteOutput as SqliteOutput
from ._stream import StreamRun as StreamRun
from ._urls import is_url as is_url
from ._writer import WRITTEN as WRITTEN
from ._writer import AppendLines as AppendLines
from ._writer import RecordWriter as RecordWriter
from ._writer import WriteFailed as WriteFailed

__all__ = [
    "FORMATS",
    "WRITTEN",
    "AckSource",
    "AppendFileOutput",
    "AppendLines",
    "CsvOutput",
    "DurableLines",
    "FailuresOutput",
    "InputError",
    "Items",
    "JsonLine",
    "JsonlOutput",
    "Lines",
    "MemoryAckSource",
    "MemorySink",
    "MemorySource",
    "Message",
    "NatsSink",
    "NatsSource",
    "Output",
    "OutputCorrupt",
    "OutputError",
    "OutputExists",
    "ParquetOutput",
    "PostgresQuerySource",
    "PostgresQueueSource",
    "PostgresSink",
    "RabbitSink",
    "RabbitSource",
    "RecordWriter",
    "RedisStreamSink",
    "RedisStreamSource",
    "Sink",
    "Source",
    "SqliteOutput",
    "StreamRun",
    "UnwritableRecord",
    "WriteFailed",
    "acknowledges",
    "encode_line",
    "format_for",
    "is_url",
    "json_default",
    "open_output",
    "open_sink",
    "open_source",
    "read_items",
]
