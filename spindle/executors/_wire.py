"""The framing between the parent and a worker process.

Each message is one frame on a stream socket::

    +----------------+--------+-----------------+------------------+
    | length (u32)   | op (u8)| batch id (u64)  | payload (length) |
    +----------------+--------+-----------------+------------------+

The payload is pickled by the sender (plain ``pickle``, protocol 5; the function
itself travels once, with cloudpickle). Keeping the header outside the pickle lets
the parent route a frame without unpickling it, and lets a sender ship a payload it
already pickled without copying it into a bigger buffer.

A worker whose stage has a reporter also sends REPORT frames, at most about one a
second and one more before it exits after STOP; they answer no request, so they may
come between any two RESULT frames.
"""

from __future__ import annotations

import socket
import struct

HEADER = struct.Struct("!IBQ")

# parent -> worker
OP_INIT = 1  # payload: cloudpickled WorkerConfig (spawned workers only)
OP_BATCH = 2  # payload: pickled list of items
OP_STOP = 3  # no payload: finish and exit 0

# worker -> parent
OP_READY = 10  # payload: pickled pid
OP_RESULT = 11  # payload: pickled (results, errors, seconds)
OP_BAD_BATCH = 12  # payload: pickled str: the batch could not be unpickled
OP_FATAL = 13  # payload: pickled (type name, message, traceback): worker cannot run
OP_REPORT = 14  # payload: pickled dict from the stage's reporter (see _reports); id 0


def frame(op: int, ident: int, payload: bytes = b"") -> list[bytes]:
    """The buffers of one frame, for ``sendmsg``/``writelines`` without a copy.

    Never an empty buffer: from Python 3.12 a socket transport's ``writelines`` keeps
    the buffers apart, and an empty one never leaves its write buffer, so the loop
    is woken for a writable socket until the worker exits, and then the broken pipe
    closes the transport before the worker's last frames (its results, its report)
    are read."""
    head = HEADER.pack(len(payload), op, ident)
    return [head, payload] if payload else [head]


class FrameReader:
    """Blocking reader of frames from a socket (a spawned worker's INIT, sync workers)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb", buffering=1 << 16)

    def read(self) -> tuple[int, int, bytes] | None:
        """The next ``(op, id, payload)``; ``None`` when the parent closed the socket."""
        head = self._file.read(HEADER.size)
        if len(head) < HEADER.size:
            return None
        length, op, ident = HEADER.unpack(head)
        payload = self._file.read(length) if length else b""
        if len(payload) < length:
            return None
        return op, ident, payload

    def close(self) -> None:
        self._file.close()


class FrameParser:
    """Incremental parser of frames from received chunks (the parent, and async workers)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        frames: list[tuple[int, int, bytes]] = []
        pos = 0
        size = len(buf)
        hs = HEADER.size
        while size - pos >= hs:
            length, op, ident = HEADER.unpack_from(buf, pos)
            end = pos + hs + length
            if end > size:
                break
            frames.append((op, ident, bytes(buf[pos + hs : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames
