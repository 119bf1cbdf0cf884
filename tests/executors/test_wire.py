"""The frames between the parent and its worker processes."""

from __future__ import annotations

from spindle.executors import _wire


def test_no_frame_holds_an_empty_buffer() -> None:
    # An empty buffer given to a transport's writelines() stays in its write buffer on
    # Python 3.12 and later, and the worker's last frames are then lost.
    for payload in (b"", b"x"):
        assert all(frame for frame in _wire.frame(_wire.OP_STOP, 0, payload))


def test_a_frame_reads_back_as_it_was_sent() -> None:
    parser = _wire.FrameParser()
    data = b"".join(_wire.frame(_wire.OP_RESULT, 7, b"payload") + _wire.frame(_wire.OP_STOP, 0))
    assert list(parser.feed(data)) == [(_wire.OP_RESULT, 7, b"payload"), (_wire.OP_STOP, 0, b"")]
