"""One machine's shared memory of the cache: an LMDB environment on a memory file system.

```
 worker A                    the cache's directory (/dev/shm/spindle-cache-…)         worker B
 ────────                    ───────────────────────────────────────────────          ────────
 get ── read txn, no lock ─▶ data.mdb  [hash | tagged key] ─▶ [tag | expires | payload]
   └─ last access ─────────▶ side      last access per hash slot (eviction's hint);
                                       hits, misses... one row per process
                             lock.mdb  LMDB's readers; its robust writer mutex ◀── set: write txn
 get_or_set on a miss ─────▶ locks     a byte-range lock per key hash (fcntl) ◀─── waits here
```

- **Reads** are LMDB read transactions: no lock, a consistent snapshot, the value
  copied out before the transaction ends. A reader marks the entry's last access in
  the *side* file (a double per hash slot, written without a lock: it is a hint).
- **Writes** are write transactions, one at a time on the machine (LMDB's writer
  mutex, a robust process-shared mutex: a writer killed while holding it leaves it to
  the next one, which LMDB hands over at once). A write replaces the record, updates
  the bytes in use (kept in the ``meta`` database, in the same transaction) and, over
  budget, evicts. A transaction is committed by writing one meta page: a writer
  killed at any instant leaves the last committed state, never part of a record.
- **Eviction** approximates LRU by sampling, as Redis does: five random entries (a
  seek to a random 8-byte point of the hash-ordered keys each), and the one read least
  recently goes; an expired entry goes first. Until the bytes in use fit the budget.
- **Counters** live in the side file, one row of 64 bytes per process; a process
  holds its row with an ``fcntl`` lock for as long as it has the cache open, and the
  kernel frees it when the process dies (a later process carries the row's counts on).
- **get_or_set** holds an ``fcntl`` lock on one byte of the *locks* file, chosen by the
  key's hash, while it computes; other processes wait for it in the kernel, and
  threads of the same process on a ``threading.RLock`` first (``fcntl`` locks belong
  to a process, not a thread). A holder that dies loses its locks at once.

Processes: LMDB must not be used across ``fork`` and opened twice in one process, so
a process keeps one :class:`Store` per directory (:func:`attach`, counted) and hooks
``os.fork``: before it, every store's lock is taken (no transaction is alive while
the process is copied); in the child each store is closed without touching what
the parent shares, and the handles open it again on first use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import pickle
import random
import shutil
import struct
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

import lmdb

from .._errors import CacheError, ConfigError
from ._codec import BYTES, EXPIRES, STR, TTL, human

#: The on-disk format this code reads and writes.
FORMAT = 1
#: Budget of a new cache when none is given.
DEFAULT_MAX_BYTES = 256 * 2**20
#: The smallest budget accepted.
MIN_MAX_BYTES = 4096
#: Entries drawn per eviction (Redis' ``maxmemory-samples`` default).
SAMPLES = 5
#: Readers at once on the machine (LMDB's reader table: at least this many).
MAX_READERS = 512
#: The size of LMDB's lock file, allocated when a cache is made: MAX_READERS slots of
#: 64 bytes and its header, rounded up to whole pages (LMDB then counts its slots).
_LOCK_FILE_BYTES = 40 * 1024
#: Rows of counters in the side file: processes whose counts are shared.
COUNTER_ROWS = 256
#: Counters in a row (64 bytes: one cache line per process).
HITS, MISSES, SETS, DELETES, EVICTIONS, EXPIRED = range(6)
ROW = 8

_SIDE_MAGIC = b"spindle-cache\x00\x00\x01"
_SIDE_HEADER = struct.Struct("<16sII")  # magic, format, atime slots
_COUNTERS_AT = 4096
_ATIME_AT = _COUNTERS_AT + COUNTER_ROWS * ROW * 8
#: Bytes of the locks file used by the store itself: 0 is the opening lock, 1 + i
#: holds counter row i; key locks start here.
_KEY_LOCKS_AT = 1 << 20
_KEY_LOCK_BITS = 40

_USED = struct.Struct("<Q")
_CONFIG = struct.Struct("<QI")  # max_bytes, format
_USED_KEY = b"used"
_CONFIG_KEY = b"config"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What a lookup returns for a key it does not have (``None`` can be a cached value).
MISSING: Final[Any] = _Missing()


def map_size(max_bytes: int) -> int:
    """LMDB's map for a budget: room for the pages around the records (a B-tree's
    half-full leaves, overflow pages rounded up, pages freed but still read).

    The map is sparse: memory is used as pages are written, and eviction keeps the
    records within ``max_bytes``, so pages in use stay near twice that at most.
    """
    size = 3 * max_bytes + 64 * 2**20
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def _atime_slots(max_bytes: int) -> int:
    """Last-access slots for a budget: one per 512 bytes (a power of two, 4 MiB of
    them for the default budget)."""
    want = max(4096, min(1 << 20, max_bytes // 512))
    return 1 << (want - 1).bit_length()


def _allocate(fd: int, size: int, name: str) -> None:
    """Allocate a file's pages now, so that writing them through a map cannot fail."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CacheError(
                f"no room for {name} ({human(size)}): its file system is full"
            ) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


@dataclass(frozen=True)
class Counts:
    """The counters summed over every process, and the store's occupancy."""

    hits: int
    misses: int
    sets: int
    deletes: int
    evictions: int
    expired: int
    bytes_used: int
    entries: int
    max_bytes: int


class Store:
    """The cache's directory opened in this process: LMDB, the side file, the locks.

    Every use of the LMDB environment holds :attr:`lock`, which the fork hook takes:
    see the module's docstring. Made by :func:`attach`, never directly.
    """

    def __init__(self, path: str, max_bytes: int | None, ident: tuple[int, int]) -> None:
        self.path = path
        self.ident = ident
        self.refs = 0
        #: Closed (by its last handle, or by a fork in this process: reopen it).
        self.stale = False
        self.lock = threading.RLock()
        self._keylocks: dict[int, _KeyLock] = {}
        self._keylocks_guard = threading.Lock()
        self._locks_fd = os.open(
            os.path.join(path, "locks"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            self._open(max_bytes)
        except BaseException:
            os.close(self._locks_fd)
            raise

    # ------------------------------------------------------------------ opening

    def _open(self, max_bytes: int | None) -> None:
        fd = self._locks_fd
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)  # one opener at a time: a new cache is set up once
        try:
            self._reserve_lock_file()
            try:
                env = lmdb.open(
                    self.path,
                    map_size=0,  # the size the cache was made with (1 MiB for a new one)
                    max_dbs=2,
                    max_readers=MAX_READERS,
                    sync=False,  # a cache: nothing to make durable, and no disk to wait for
                    metasync=False,
                    readahead=False,
                    mode=0o600,
                )
            except lmdb.Error as exc:
                raise CacheError(
                    f"the cache at {self.path} cannot be opened ({exc}): if it is damaged, "
                    "remove the directory and start again"
                ) from exc
            try:
                self.max_bytes = self._configure(env, max_bytes)
                if env.info()["map_size"] < map_size(self.max_bytes):  # a new cache
                    env.set_mapsize(map_size(self.max_bytes))
                    # a commit writes the size down for the processes that open it next
                    with env.begin(write=True, db=self._meta) as txn:
                        txn.put(_USED_KEY, _USED.pack(0))
                self._data = env.open_db(b"data")
                env.reader_check()  # readers left by killed processes
                self._open_side()
            except BaseException:
                env.close()
                raise
            self.env = env
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        self._row = self._claim_row()
        self.counters = self._side_counters[self._row * ROW : (self._row + 1) * ROW]

    def _reserve_lock_file(self) -> None:
        """Make LMDB's lock file of a new cache, its pages allocated.

        LMDB maps its lock file and writes readers' slots into it; on a memory file
        system a page first written when the file system is full is a SIGBUS, not an
        error. The pages are allocated here, before LMDB opens the file (not after: a
        process closing any descriptor of that file would drop LMDB's locks on it).
        """
        name = os.path.join(self.path, "lock.mdb")
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        try:
            _allocate(fd, _LOCK_FILE_BYTES, name)
        finally:
            os.close(fd)

    def _configure(self, env: lmdb.Environment, max_bytes: int | None) -> int:
        self._meta = env.open_db(b"meta")
        with env.begin(write=True, db=self._meta) as txn:
            raw = txn.get(_CONFIG_KEY)
            if raw is None:
                budget = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
                txn.put(_CONFIG_KEY, _CONFIG.pack(budget, FORMAT))
                txn.put(_USED_KEY, _USED.pack(0))
                return budget
            budget, fmt = _CONFIG.unpack(raw)
        if fmt != FORMAT:
            raise CacheError(
                f"the cache at {self.path} was made by another version of spindle "
                f"(format {fmt}, this one reads {FORMAT}): remove the directory, or open "
                "it with that version"
            )
        if max_bytes is not None and max_bytes != budget:
            raise ConfigError(
                f"the cache at {self.path} has max_bytes={budget:,}, not {max_bytes:,}: "
                "open it with that budget (or max_bytes=None), or use another path"
            )
        return int(budget)

    def _open_side(self) -> None:
        fd = os.open(os.path.join(self.path, "side"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                slots = _atime_slots(self.max_bytes)
                size = _ATIME_AT + slots * 8
                os.ftruncate(fd, size)
                _allocate(fd, size, os.path.join(self.path, "side"))  # no SIGBUS later
                mm = mmap.mmap(fd, size)
                _SIDE_HEADER.pack_into(mm, 0, _SIDE_MAGIC, FORMAT, slots)
            else:
                mm = mmap.mmap(fd, size)
                magic, fmt, slots = _SIDE_HEADER.unpack_from(mm, 0)
                if magic != _SIDE_MAGIC or fmt != FORMAT or size != _ATIME_AT + slots * 8:
                    mm.close()
                    raise CacheError(
                        f"{os.path.join(self.path, 'side')} is not a spindle cache's file: "
                        "remove the directory and start again"
                    )
        finally:
            os.close(fd)
        self._mm = mm
        view = memoryview(mm)
        self._side_counters = view[_COUNTERS_AT:_ATIME_AT].cast("Q")
        self.atime = view[_ATIME_AT:].cast("d")
        self.atime_mask = slots - 1
        view.release()

    def _claim_row(self) -> int:
        """A row of counters no live process holds (the kernel frees a dead one's)."""
        for row in range(COUNTER_ROWS):
            try:
                fcntl.lockf(self._locks_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + row)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                continue
            return row
        # Every row is held by a live process: count in the last one too (a lost
        # increment now and then, where two processes race on it).
        return COUNTER_ROWS - 1

    # ------------------------------------------------------------------ reads

    def get(self, lkey: bytes, h: int, now: float, count_miss: bool = True) -> Any:
        """The value stored under ``lkey``, or :data:`MISSING`."""
        # The hot path: a read transaction that copies the record out (cheaper than
        # LMDB's zero-copy buffers for records of any size here) and the counters,
        # under the lock (acquire and release: "with" costs a third more in CPython
        # 3.11); the record is decoded after, since unpickling may run any code.
        lock = self.lock
        lock.acquire()
        try:
            try:
                txn = self.env.begin(self._data)
            except (lmdb.ReadersFullError, lmdb.MapResizedError) as exc:
                txn = self._begin_again(exc)
            try:
                rec = txn.get(lkey)
            finally:
                txn.abort()
            counters = self.counters
            if rec is not None:
                tag = rec[0]
                if tag < TTL:
                    start = 1
                elif EXPIRES.unpack_from(rec, 1)[0] > now:
                    tag, start = tag ^ TTL, 9
                else:
                    counters[EXPIRED] += 1
                    rec = None
                if rec is not None:
                    counters[HITS] += 1
                    self.atime[h & self.atime_mask] = now
            if rec is None and count_miss:
                counters[MISSES] += 1
        finally:
            lock.release()
        if rec is None:
            return MISSING
        if tag == BYTES:
            return rec[start:]
        if tag == STR:
            return rec[start:].decode()
        return pickle.loads(memoryview(rec)[start:])

    def _begin_again(self, exc: lmdb.Error) -> lmdb.Transaction[bytes]:
        """A read transaction after LMDB refused one: the reader table was full (the
        slots of readers that were killed are freed), or the map grew elsewhere."""
        self._recover(exc)
        try:
            return self.env.begin(self._data)
        except lmdb.ReadersFullError:
            raise CacheError(
                f"the cache at {self.path} has {MAX_READERS} readers at once, all alive: "
                "use fewer threads or processes at once"
            ) from None

    def _recover(self, exc: lmdb.Error) -> None:
        """Make LMDB usable again after ``exc`` (no transaction of this process is
        alive: the caller holds :attr:`lock`)."""
        if isinstance(exc, lmdb.MapResizedError):
            self.env.set_mapsize(0)  # adopt the size another process gave the map
        else:
            self.env.reader_check()

    # ------------------------------------------------------------------ writes

    def put(self, lkey: bytes, h: int, rec: bytes, now: float) -> None:
        """Store a record (its size checked against the budget by the caller)."""
        self.atime[h & self.atime_mask] = now  # the new entry is the most recent
        size = len(lkey) + len(rec)
        lock = self.lock
        lock.acquire()
        try:
            self._write(self._put, lkey, rec, size, now)
            self.counters[SETS] += 1
        finally:
            lock.release()

    def _put(self, txn: lmdb.Transaction, lkey: bytes, rec: bytes, size: int, now: float) -> None:
        old = txn.replace(lkey, rec, db=self._data)
        used = self._used(txn) + size
        if old is not None:
            used -= len(lkey) + len(old)
        if used > self.max_bytes:
            used = self._evict(txn, used, now, lkey)
        txn.put(_USED_KEY, _USED.pack(used), db=self._meta)

    def delete(self, lkey: bytes) -> bool:
        """Remove ``lkey``; whether it was there."""
        with self.lock:
            found = self._write(self._delete, lkey)
            if found:
                self.counters[DELETES] += 1
        return bool(found)

    def _delete(self, txn: lmdb.Transaction, lkey: bytes) -> bool:
        old = txn.pop(lkey, db=self._data)
        if old is None:
            return False
        used = self._used(txn) - len(lkey) - len(old)
        txn.put(_USED_KEY, _USED.pack(max(used, 0)), db=self._meta)
        return True

    def clear(self) -> None:
        """Remove every entry (the counters go on)."""
        with self.lock:
            self._write(self._clear)

    def _clear(self, txn: lmdb.Transaction) -> None:
        txn.drop(self._data, delete=False)
        txn.put(_USED_KEY, _USED.pack(0), db=self._meta)

    def _write(self, body: Any, *args: Any) -> Any:
        """Run ``body(txn, *args)`` in a write transaction, committed when it returns.

        A map that is full (pages held by a reader that was killed, or records much
        smaller than their pages) is made room in: stale readers cleared, then a
        tenth of the entries evicted, and the write tried again.
        """
        for attempt in range(3):
            try:
                txn = self.env.begin(write=True, buffers=True)
                try:
                    result = body(txn, *args)
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()  # (not "with": it costs a third of a microsecond more)
                return result
            except (lmdb.MapFullError, lmdb.ReadersFullError, lmdb.MapResizedError) as exc:
                self._recover(exc)
                if attempt >= 1 and isinstance(exc, lmdb.MapFullError):
                    self._shrink()
            except lmdb.Error as exc:
                if getattr(exc, "code", None) == errno.ENOSPC:
                    raise CacheError(
                        f"the file system of the cache at {self.path} is full: nothing was "
                        "written; free some room there, or give the cache a smaller max_bytes"
                    ) from exc
                raise CacheError(f"the cache at {self.path} could not be written: {exc}") from exc
        raise CacheError(
            f"the cache at {self.path} is full beyond its map ({human(map_size(self.max_bytes))}) "
            "even after evicting: its records are much smaller than LMDB's pages; "
            "give it a larger max_bytes"
        )

    def _shrink(self) -> None:
        """Evict a tenth of the bytes in use, in a transaction of its own."""
        with (
            contextlib.suppress(lmdb.MapFullError),
            self.env.begin(write=True, buffers=True) as txn,
        ):
            used = self._used(txn)
            used = self._evict(txn, used, 0.0, b"", target=used * 9 // 10)
            txn.put(_USED_KEY, _USED.pack(used), db=self._meta)

    def _used(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_USED_KEY, db=self._meta)
        return int(_USED.unpack(raw)[0]) if raw is not None else 0

    def _evict(
        self, txn: lmdb.Transaction, used: int, now: float, keep: bytes, target: int | None = None
    ) -> int:
        """Evict sampled entries until ``used`` is at most ``target`` (the budget);
        the new bytes in use. ``keep`` (the entry being written) is never drawn."""
        limit = self.max_bytes if target is None else target
        atime, mask = self.atime, self.atime_mask
        cursor = txn.cursor(self._data)
        evicted = 0
        draw = random.randbytes
        while used > limit:
            victim: bytes | None = None
            victim_size = 0
            oldest = float("inf")
            for _ in range(SAMPLES):
                if not cursor.set_range(draw(8)) and not cursor.first():
                    break
                k = cursor.key()
                if k == keep:
                    continue
                v = cursor.value()
                if v[0] >= TTL and EXPIRES.unpack_from(v, 1)[0] <= now:
                    victim, victim_size = bytes(k), len(k) + len(v)
                    break
                seen = atime[int.from_bytes(k[:8], "big") & mask]
                if seen < oldest:
                    oldest, victim, victim_size = seen, bytes(k), len(k) + len(v)
            if victim is None:  # every draw found the entry being written: take another
                found = cursor.first()
                while found and cursor.key() == keep:
                    found = cursor.next()
                if not found:
                    break  # nothing but the entry being written
                victim_size = len(cursor.key()) + len(cursor.value())
            else:
                cursor.set_key(victim)
            cursor.delete()
            used -= victim_size
            evicted += 1
        cursor.close()
        self.counters[EVICTIONS] += evicted
        return max(used, 0)

    # ------------------------------------------------------------------ the rest

    def counts(self) -> Counts:
        rows = self._side_counters.tolist()
        sums = [sum(rows[i::ROW]) for i in range(ROW)]
        with self.lock, self.env.begin(self._data) as txn:
            entries = txn.stat(self._data)["entries"]
            used = self._used(txn)
        return Counts(
            hits=sums[HITS],
            misses=sums[MISSES],
            sets=sums[SETS],
            deletes=sums[DELETES],
            evictions=sums[EVICTIONS],
            expired=sums[EXPIRED],
            bytes_used=used,
            entries=entries,
            max_bytes=self.max_bytes,
        )

    @contextlib.contextmanager
    def key_lock(self, h: int) -> Iterator[None]:
        """Hold the lock of a key's hash: the threads of this process one at a time,
        then the processes (``fcntl``: the kernel frees it if this process dies)."""
        offset = _KEY_LOCKS_AT + (h >> (64 - _KEY_LOCK_BITS))
        with self._keylocks_guard:
            entry = self._keylocks.get(offset)
            if entry is None:
                entry = self._keylocks[offset] = _KeyLock()
            entry.users += 1
        try:
            with entry.rlock:
                entry.depth += 1
                try:
                    if entry.depth == 1:
                        entry.held = _lock_range(self._locks_fd, offset)
                    yield
                finally:
                    entry.depth -= 1
                    if entry.depth == 0 and entry.held:
                        entry.held = False
                        fcntl.lockf(self._locks_fd, fcntl.LOCK_UN, 1, offset)
        finally:
            with self._keylocks_guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._keylocks[offset]

    def close(self) -> None:
        """Close the environment and the files (the last handle in this process)."""
        self.stale = True
        with self.lock:
            self.env.close()
        self._release_files()

    def forked(self) -> None:
        """In a child just forked: let go of the parent's copies without touching
        what the parent shares (no transaction is alive: the hook held the lock)."""
        self.stale = True
        self.lock = threading.RLock()
        self._keylocks = {}
        self._keylocks_guard = threading.Lock()
        with contextlib.suppress(lmdb.Error):
            self.env.close()
        self._release_files()

    def _release_files(self) -> None:
        for view in (self.counters, self._side_counters, self.atime):
            view.release()
        self._mm.close()
        os.close(self._locks_fd)  # frees this process's counter row and key locks


class _KeyLock:
    __slots__ = ("depth", "held", "rlock", "users")

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.users = 0
        self.depth = 0
        self.held = False


def _lock_range(fd: int, offset: int) -> bool:
    """Wait for the byte at ``offset``; False when the kernel sees that waiting would
    deadlock (two processes each holding the other's key, through their functions):
    the caller then computes without the lock."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
    except OSError as exc:
        if exc.errno == errno.EDEADLK:
            return False
        raise
    return True


# ---------------------------------------------------------------------- one store per process

_stores: dict[tuple[int, int], Store] = {}
_stores_guard = threading.Lock()
_live: weakref.WeakSet[Store] = weakref.WeakSet()
#: How many times this process's line has forked: a handle made before a fork knows
#: that what it holds belongs to the parent.
_generation = [0]


def generation() -> int:
    return _generation[0]


def attach(path: str, max_bytes: int | None, *, create: bool) -> Store:
    """This process's store for the directory ``path`` (opened, or made if ``create``),
    counted: each :func:`attach` is matched by one :func:`detach`."""
    with _stores_guard:
        return _attach(path, max_bytes, create)


def _attach(path: str, max_bytes: int | None, create: bool) -> Store:
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except FileNotFoundError:
        raise CacheError(
            f"the cache at {path} no longer exists: the Cache that made it was closed "
            "(a cache made with path=None lives as long as the handle that made it)"
        ) from None
    except OSError as exc:
        raise CacheError(f"the cache's directory {path} cannot be made or opened: {exc}") from exc
    ident = (st.st_dev, st.st_ino)
    store = _stores.get(ident)
    if store is not None and not store.stale:
        if max_bytes is not None and max_bytes != store.max_bytes:
            raise ConfigError(
                f"the cache at {path} has max_bytes={store.max_bytes:,}, not "
                f"{max_bytes:,}: open it with that budget (or max_bytes=None)"
            )
    else:
        store = Store(path, max_bytes, ident)
        _stores[ident] = store
        _live.add(store)
    store.refs += 1
    return store


class Holder(Protocol):
    """A handle on a store, as :func:`reattach` and :func:`release` see it."""

    _st: Any
    _closed: bool
    _path: str


def reattach(holder: Holder) -> Store:
    """The handle's store, opened again if a fork (in this process's line) closed it;
    a :class:`CacheError` if the handle was closed."""
    with _stores_guard:
        if holder._closed:
            raise CacheError(f"Cache({holder._path!r}) is closed: open the cache again to use it")
        store = holder._st
        if store.stale:
            store = holder._st = _attach(holder._path, None, False)
        return store  # type: ignore[no-any-return]


def release(holder: Holder, closed: Any) -> bool:
    """Close a handle: its store is let go of (the last handle closes it), and
    ``closed`` takes its place. False if it was closed already."""
    with _stores_guard:
        if holder._closed:
            return False
        holder._closed = True
        store: Store = holder._st
        holder._st = closed
        if store.stale:
            return True
        store.refs -= 1
        if store.refs == 0:
            if _stores.get(store.ident) is store:
                del _stores[store.ident]
            store.close()
        return True


def registry_lock() -> threading.Lock:
    """The lock of this process's stores (a new one in a forked child)."""
    return _stores_guard


def remove_directory(path: str, pid: int) -> None:
    """Remove a cache's directory, in the process that made it only."""
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


_held: list[Store] = []


def _before_fork() -> None:
    _stores_guard.acquire()
    for store in list(_live):
        if not store.stale:
            store.lock.acquire()
            _held.append(store)


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().lock.release()
    _stores_guard.release()


def _after_fork_in_child() -> None:
    global _stores_guard
    _generation[0] += 1
    held, _held[:] = list(_held), []
    for store in held:
        store.forked()
    _stores.clear()
    _stores_guard = threading.Lock()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
