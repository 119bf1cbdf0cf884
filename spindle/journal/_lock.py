"""One run per journal at a time: an exclusive ``flock`` on ``<journal>-lock``.

Two runs resuming the same journal would each cut the output back to the committed point
and then both append to it, so the second one must be refused. The lock is an ``flock``
on a file next to the journal, named like SQLite's own ``-wal`` and ``-shm`` files:

* not on the database file itself: SQLite holds POSIX (``fcntl``) locks on it, and
  closing *any* descriptor of that file in the process drops them all;
* a crashed process's lock goes with it, so a stale lock never blocks a resume;
* the file is removed on release; a run that opened it just before that checks, once it
  holds the lock, that the path still names the file it locked, and retries if not.

Journals must live on a local file system (SQLite's WAL mode needs that anyway).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; SQLite's own locking still guards the database
    fcntl = None  # type: ignore[assignment]

from ._errors import JournalError, JournalLocked

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Lock files this process holds: a refusal can then say the holder is this process
#: (an earlier run's results not closed), not another run.
_HELD: set[Path] = set()


def lock_path(journal: Path) -> Path:
    """The lock file of the journal at ``journal``."""
    return journal.with_name(journal.name + "-lock")


class JournalLock:
    """The exclusive lock of one open journal."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.path = lock_path(journal)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock, or raise :class:`JournalLocked` if another run holds the journal."""
        if fcntl is None:
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
            except OSError as exc:
                raise JournalError(
                    f"cannot open journal {self.journal}: cannot create its lock file "
                    f"{self.path}: {exc.strerror or exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                if self.path in _HELD:
                    raise JournalLocked(
                        f"journal {self.journal} is still open in this process, by an "
                        "earlier run whose results were not closed: call close() on them "
                        "(or iterate them in a with block) before running again"
                    ) from exc
                raise JournalLocked(
                    f"journal {self.journal} is in use by another spindle run; wait for it "
                    "to finish, or stop it, before running again"
                ) from exc
            except OSError as exc:
                os.close(fd)
                raise JournalError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                _HELD.add(self.path)
                return
            os.close(fd)  # removed by the run that just released it: lock the new one

    def release(self) -> None:
        """Remove the lock file and unlock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _HELD.discard(self.path)
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still holding the lock: see acquire()
            os.close(fd)


def is_locked(journal: Path) -> bool:
    """Whether a run holds the journal at ``journal`` now (``status``: running or not)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_path(journal), os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return False
