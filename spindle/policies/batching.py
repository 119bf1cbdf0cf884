"""Adaptive batch sizes: send a worker as many items as fit in a target time.

Sending one tiny item at a time to a process costs far more in pickling and waking
than the item itself; sending huge batches to slow items spoils load balance and
latency. The policy measures the cost per item (reported by the worker, so it is
compute time, not queueing) and aims each batch at ``target`` seconds of work.
The default, 20 ms, keeps a round trip (two wake-ups of the parent, each costing tens
of microseconds of CPU on a busy machine) under 1% of the batch, while the last
batches leave a worker idle for at most that long.

It starts at one item, so a slow function (say 20 ms an item) is never batched and
every worker gets work at once, and it reaches the right size for a fast function
within a few batches because each step may grow the size eightfold.
"""

from __future__ import annotations


class AdaptiveBatch:
    """Batch size from an exponentially weighted average of the cost per item."""

    __slots__ = ("_cost", "_size", "fixed", "max_size", "target")

    def __init__(
        self, *, target: float = 0.02, max_size: int = 4096, fixed: int | None = None
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"batch_size must be >= 1, got {fixed}")
        self.target = target
        self.max_size = fixed if fixed is not None else max_size
        self.fixed = fixed
        self._cost: float | None = None
        self._size = fixed or 1

    @property
    def size(self) -> int:
        """How many items the next batch should hold."""
        return self._size

    @property
    def cost_per_item(self) -> float | None:
        """The measured seconds per item, or None before the first measure."""
        return self._cost

    def observe(self, n_items: int, seconds: float) -> None:
        """Account for a batch of ``n_items`` that took ``seconds`` of work."""
        if self.fixed is not None or n_items <= 0:
            return
        cost = max(seconds, 1e-9) / n_items
        self._cost = cost if self._cost is None else 0.7 * self._cost + 0.3 * cost
        ideal = int(self.target / self._cost)
        # Grow by at most 8x a step: one fast batch must not jump to the maximum, since
        # a batch's results come back only when its slowest item is done.
        self._size = max(1, min(self.max_size, ideal, self._size * 8))
