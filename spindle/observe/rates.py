"""Throughput over time: a sliding-window rate, and a bounded timeline of the run.

Both are fed from successive snapshots and use the snapshot's ``elapsed`` as their clock,
so they are deterministic (a test feeds them made-up times) and never read the wall
clock themselves::

    snapshot() ──▶ RateWindow.update(elapsed, processed)  ──▶ recent, overall items/s
               └─▶ Timeline.add(snapshot)                  ──▶ points(): t, rate, p50/p95/p99,
                                                               in flight, queued per stage

The timeline keeps at most ``max_points`` points whatever the run's length: when it is
full it drops every other point and doubles its interval, so it always covers the whole
run, at a resolution that coarsens as the run grows. Rates are derived from cumulative
counts, so a rate over a coarser interval is still the exact mean over that interval.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from .._errors import ConfigError
from ._snapshot import normalize

__all__ = ["RateWindow", "StagePoint", "Timeline", "TimelineDict", "TimelinePoint"]

_FINAL = frozenset({"done", "failed"})


class RateWindow:
    """Items a second over the last ``window`` seconds, and over the whole run.

    Feed it the cumulative count with the time it was read (seconds since the start);
    it keeps at most ``max_samples`` samples.
    """

    __slots__ = ("_samples", "_spacing", "window")

    def __init__(self, window: float = 10.0, *, max_samples: int = 128) -> None:
        if not window > 0:
            raise ConfigError(f"a rate window must be a positive number of seconds, not {window!r}")
        if max_samples < 2:
            raise ConfigError(f"a rate window needs at least 2 samples, not {max_samples!r}")
        self.window = float(window)
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        # Samples closer together than this replace each other, so that frequent
        # updates do not push the start of the window out of a full deque.
        self._spacing = self.window / (max_samples - 2)

    def update(self, elapsed: float, total: float) -> None:
        """Record that ``total`` items were processed ``elapsed`` seconds into the run."""
        samples = self._samples
        if samples:
            last_t = samples[-1][0]
            if elapsed < last_t:
                return  # a stale read; time never runs backwards here
            if len(samples) > 1 and elapsed - samples[-2][0] < self._spacing:
                samples.pop()
        samples.append((elapsed, total))
        horizon = elapsed - self.window
        # Keep one sample at or before the window's start, so the window is full width.
        while len(samples) > 2 and samples[1][0] <= horizon:
            samples.popleft()

    @property
    def recent(self) -> float:
        """Items a second over the last ``window`` seconds (the overall rate at first)."""
        samples = self._samples
        if len(samples) < 2:
            return self.overall
        t0, c0 = samples[0]
        t1, c1 = samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def overall(self) -> float:
        """Items a second since the start of the run."""
        if not self._samples:
            return 0.0
        t, c = self._samples[-1]
        return c / t if t > 0 else 0.0

    @property
    def total(self) -> float:
        """The latest cumulative count."""
        return self._samples[-1][1] if self._samples else 0.0

    def eta(self, goal: float) -> float | None:
        """Seconds until ``goal`` items at the recent rate, or ``None`` if unknown."""
        speed = self.recent
        if speed <= 0:
            return None
        return max(goal - self.total, 0.0) / speed

    def __repr__(self) -> str:
        return f"RateWindow(recent={self.recent:.3g}/s, overall={self.overall:.3g}/s)"


class StagePoint(TypedDict):
    """A stage at one point of the timeline.

    ``rate`` is items (done and failed) a second since the previous point; the
    percentiles are the stage's latency percentiles (seconds) as the snapshot reported
    them at that time.
    """

    done: int
    failed: int
    rate: float
    p50: float
    p95: float
    p99: float
    in_flight: int
    queued: int


class TimelinePoint(TypedDict):
    """The stages at ``t`` seconds into the run."""

    t: float
    stages: dict[str, StagePoint]


class TimelineDict(TypedDict):
    """The plain-data form of a timeline (what the dashboard's ``/api/timeline`` sends)."""

    interval: float
    stages: list[str]
    points: list[TimelinePoint]


@dataclass(frozen=True, slots=True)
class _Sample:
    done: int
    failed: int
    p50: float
    p95: float
    p99: float
    in_flight: int
    queued: int


class Timeline:
    """A bounded series of per-stage figures over the run, fed from successive snapshots.

    At most one point per ``interval`` seconds (the last snapshot of a run is always
    kept) and at most ``max_points`` points.
    """

    def __init__(self, *, interval: float = 1.0, max_points: int = 3600) -> None:
        if not interval > 0:
            raise ConfigError(f"a timeline interval must be positive, not {interval!r}")
        if max_points < 4:
            raise ConfigError(f"a timeline needs room for at least 4 points, not {max_points!r}")
        self._interval = float(interval)
        self._max_points = max_points
        self._times: list[float] = []
        self._samples: list[dict[str, _Sample]] = []
        self._stages: dict[str, None] = {}
        self._final = False

    @property
    def interval(self) -> float:
        """The smallest spacing of points now (it doubles each time the timeline fills)."""
        return self._interval

    @property
    def max_points(self) -> int:
        """The most points kept."""
        return self._max_points

    @property
    def stages(self) -> list[str]:
        """Stage names in the order they first appeared."""
        return list(self._stages)

    def __len__(self) -> int:
        return len(self._times)

    def add(self, snapshot: Mapping[str, Any]) -> bool:
        """Take a point from a snapshot if one is due; return whether it was kept."""
        snap = normalize(snapshot)
        t = snap["elapsed"]
        final = snap["status"] in _FINAL
        if self._times:
            last = self._times[-1]
            if t <= last or self._final:
                return False
            if t < last + self._interval and not final:
                return False
        self._final = final
        sample: dict[str, _Sample] = {}
        for stage in snap["stages"]:
            lat = stage["latency"]
            sample[stage["name"]] = _Sample(
                done=stage["done"],
                failed=stage["failed"],
                p50=lat["p50"],
                p95=lat["p95"],
                p99=lat["p99"],
                in_flight=stage["in_flight"],
                queued=stage["queued"],
            )
            self._stages.setdefault(stage["name"], None)
        self._times.append(t)
        self._samples.append(sample)
        if len(self._times) > self._max_points:
            self._halve()
        return True

    def _halve(self) -> None:
        # Keep the newest point and every other one before it.
        n = len(self._times)
        keep = range(n - 1, -1, -2)
        self._times = [self._times[i] for i in reversed(keep)]
        self._samples = [self._samples[i] for i in reversed(keep)]
        self._interval *= 2

    def points(self, since: float | None = None) -> list[TimelinePoint]:
        """The points, oldest first; only those after ``since`` seconds when given."""
        out: list[TimelinePoint] = []
        prev_t = 0.0
        prev: dict[str, _Sample] = {}
        for t, sample in zip(self._times, self._samples, strict=True):
            if since is None or t > since:
                dt = t - prev_t
                stages: dict[str, StagePoint] = {}
                for name, s in sample.items():
                    before = prev.get(name)
                    processed = s.done + s.failed
                    earlier = before.done + before.failed if before else 0
                    stages[name] = {
                        "done": s.done,
                        "failed": s.failed,
                        "rate": max(processed - earlier, 0) / dt if dt > 0 else 0.0,
                        "p50": s.p50,
                        "p95": s.p95,
                        "p99": s.p99,
                        "in_flight": s.in_flight,
                        "queued": s.queued,
                    }
                out.append({"t": t, "stages": stages})
            prev_t, prev = t, sample
        return out

    def to_dict(self, since: float | None = None) -> TimelineDict:
        """Plain data: the interval, the stage names and :meth:`points`."""
        return {"interval": self._interval, "stages": self.stages, "points": self.points(since)}

    def __repr__(self) -> str:
        span = self._times[-1] if self._times else 0.0
        return f"Timeline({len(self)} points over {span:.1f} s, every {self._interval:g} s)"
