"""spindle: run big streams of jobs at the highest throughput the machine allows.

asyncio (I/O), threads (blocking calls) and processes (CPU work, optionally each with
its own event loop) in one bounded pipeline that reads its input lazily, loses
nothing, and stops cleanly.
"""

from typing import TYPE_CHECKING

from ._errors import ConfigError as ConfigError
from ._errors import JobError as JobError
from ._errors import MalformedInput as MalformedInput
from ._errors import Permanent as Permanent
from ._errors import PipelineClosed as PipelineClosed
from ._errors import RemoteTraceback as RemoteTraceback
from ._errors import SpindleError as SpindleError
from ._errors import Timeout as Timeout
from ._errors import Unpicklable as Unpicklable
from ._errors import WorkerCrashed as WorkerCrashed
from ._failure import Failure as Failure
from ._lazy import lazy_names as _lazy_names
from ._worker_state import worker_state as worker_state

if TYPE_CHECKING:
    from ._api import Pipeline as Pipeline
    from ._api import cpu as cpu
    from ._api import io as io
    from ._api import map as map
    from ._api import thread as thread
    from ._core.pipeline import Results as Results
    from ._core.stage import Stage as Stage
    from ._core.stage import StageStats as StageStats
    from .cache import Cache as Cache
    from .cache import cache as cache
    from .cache import memoize as memoize
    from .jobs.fetch import fetch as fetch
    from .pool import Executor as Executor
    from .pool import Pool as Pool

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "ConfigError",
    "Executor",
    "Failure",
    "JobError",
    "MalformedInput",
    "Permanent",
    "Pipeline",
    "PipelineClosed",
    "Pool",
    "RemoteTraceback",
    "Results",
    "SpindleError",
    "Stage",
    "StageStats",
    "Timeout",
    "Unpicklable",
    "WorkerCrashed",
    "cache",
    "cpu",
    "fetch",
    "io",
    "map",
    "memoize",
    "thread",
    "worker_state",
]

# The engine is imported on first use, so that a worker process, which imports
# spindle.executors, starts without loading the pipeline, rich or aiohttp.
_LAZY = {
    "cpu": "._api",
    "io": "._api",
    "map": "._api",
    "thread": "._api",
    "Pipeline": "._api",
    "Results": "._core.pipeline",
    "StageStats": "._core.stage",
    "Stage": "._core.stage",
    "fetch": ".jobs.fetch",  # loads the HTTP client: only when asked for
    "Executor": ".pool",
    "Pool": ".pool",
    # spindle.cache is the package, and calling it returns the current run's cache
    "Cache": ".cache",
    "cache": ".cache",
    "memoize": ".cache",
}


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals(), __all__)
