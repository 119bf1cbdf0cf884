"""The job every server of ``python -m bench.serve`` runs, and the peers' servers.

Every server serves the same function, :func:`job`, and the item says what it does, so
each server is started once for all the works and every server does the same work for
the same request body:

* ``{"x": 1}``: nothing; the item comes back as it is (*noop*);
* ``{"x": 1, "loops": L}``: ``L`` iterations of :func:`bench.work.spin`, pure-Python
  CPU; the harness measures once how many make 1 ms (*cpu1ms*) and puts that count in
  the body, 500 times as many for the slow requests of the *mix*.

The peers, each started by the harness as a command of its own:

* ``python -m bench.serve_jobs tornado PORT``: the classic design, a Tornado app forked
  into one process per core (``tornado.process.fork_processes(0)``, the sockets bound
  before the fork, as Tornado's documentation shows), ``POST /run`` parsing the JSON
  body, running :func:`job` inline in the handler, answering ``{"result": ...}``;
* ``uvicorn bench.serve_jobs:fastapi_app --factory --workers N``: FastAPI, a plain
  ``def`` endpoint (FastAPI runs it on its thread pool, as its documentation advises for
  blocking code, so the event loop stays free), the item as the whole JSON body
  (``Body()``), answering ``{"result": ...}``.

spindle serves it with ``spindle serve bench.serve_jobs:job --kind cpu``. This module
imports only the standard library and :mod:`bench.work` at its top: the peers' imports
are inside the functions that start them.
"""

from __future__ import annotations

import sys
from typing import Any

from .work import spin


def job(item: Any) -> Any:
    """The item back (a no-op), or ``{"x": spin(x, loops)}`` when it asks for CPU work."""
    if type(item) is dict:
        loops = item.get("loops")
        if loops:
            return {"x": spin(item.get("x", 0), loops)}
    return item


# -- the peers -------------------------------------------------------------------------


def tornado_main(port: int) -> None:
    """Serve :func:`job` on ``port`` from one forked Tornado process per core."""
    import asyncio
    import json

    import tornado.httpserver
    import tornado.netutil
    import tornado.process
    import tornado.web

    class Run(tornado.web.RequestHandler):
        def post(self) -> None:
            item = json.loads(self.request.body)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"result": job(item)}))

    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096)
    tornado.process.fork_processes(0)  # one process per core; this one only watches them

    async def serve() -> None:
        server = tornado.httpserver.HTTPServer(tornado.web.Application([("/run", Run)]))
        server.add_sockets(sockets)
        print(
            f"tornado: process {tornado.process.task_id()} listening on port {port}",
            file=sys.stderr,
            flush=True,
        )
        await asyncio.Event().wait()

    asyncio.run(serve())


def fastapi_app() -> Any:
    """The FastAPI application (``uvicorn ... --factory``)."""
    from fastapi import Body, FastAPI

    app = FastAPI()

    @app.post("/run")
    def run(item: Any = Body()):  # type: ignore[no-untyped-def]  # noqa: B008
        return {"result": job(item)}

    return app


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "tornado":
        sys.exit("usage: python -m bench.serve_jobs tornado PORT")
    tornado_main(int(sys.argv[2]))
