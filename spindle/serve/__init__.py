"""``spindle serve``: a function, a stage or a pipeline behind an HTTP API.

Jobs arrive over HTTP (``POST /run`` answers when done, ``POST /jobs`` at once with an
id) and run on one long-lived run of the pipeline, on every core; the HTTP side stays
free while they run. The pieces:

- :mod:`._jobs`: a job, what waits for it, how its outcome is told over HTTP;
- :mod:`._runner`: the run fed with jobs, handing results back a chunk at a time;
- :mod:`._service`: admission (``max_queue``, then 429), the jobs kept for ``/jobs``;
- :mod:`._store`: the journal (``--journal``), group-committed;
- :mod:`._http`: the routes, on aiohttp;
- :mod:`._server`: start, signals, the graceful stop.
"""

from ._server import Server as Server
from ._server import serve as serve

__all__ = ["Server", "serve"]
