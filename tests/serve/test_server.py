"""spindle.serve.Server in this process: every route and status, limits, the stop."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spindle
from spindle.observe import TokenRequired
from spindle.serve import Server

from . import jobs
from ._client import get, post


@pytest.fixture
def server() -> Iterator[Server]:
    with Server(spindle.cpu(jobs.behave, workers=2), port=0) as s:
        yield s


def test_run_answers_with_the_result(server: Server) -> None:
    reply = post(server.url, "/run", {"a": [1, 2]})
    assert reply.status == 200
    assert reply.json() == {"result": {"a": [1, 2]}}
    assert reply.headers["Content-Type"].startswith("application/json")


def test_a_job_that_raises_is_422_without_its_traceback_unless_asked(server: Server) -> None:
    reply = post(server.url, "/run", "raise")
    assert reply.status == 422
    body = reply.json()
    assert body == {"error": "ValueError", "message": "asked to fail", "attempts": 1}
    reply = post(server.url, "/run?traceback=1", "raise")
    assert reply.status == 422
    assert "ValueError: asked to fail" in reply.json()["traceback"]


def test_a_job_that_kills_its_worker_fails_alone_and_the_next_succeeds(server: Server) -> None:
    reply = post(server.url, "/run", "die")
    assert reply.status == 500
    assert reply.json()["error"] == "WorkerCrashed"
    for i in range(5):
        assert post(server.url, "/run", i).json() == {"result": i}


def test_a_result_that_is_not_json_is_500_naming_it(server: Server) -> None:
    # An object() cannot even come back from the worker: it is unpicklable there.
    reply = post(server.url, "/run", "unjson")
    assert reply.status in (422, 500)
    assert reply.json()["error"] in ("Unpicklable", "UnencodableResult")


def test_a_job_past_its_timeout_is_504() -> None:
    with Server(spindle.cpu(jobs.behave, workers=1, timeout=0.3), port=0) as s:
        reply = post(s.url, "/run", {"sleep": 30})
        assert reply.status == 504
        assert reply.json()["error"] == "Timeout"
        assert post(s.url, "/run", 1).json() == {"result": 1}


def test_ndjson_run_streams_one_line_per_item_in_order(server: Server) -> None:
    body = b'1\n{"sleep": 0.2, "then": "late"}\n"raise"\nnot json\n\n5\n'
    reply = post(server.url, "/run", raw=body, headers={"Content-Type": "application/x-ndjson"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/x-ndjson")
    lines = reply.lines()
    assert lines[0] == {"result": 1}
    assert lines[1] == {"result": "late"}
    assert lines[2]["error"] == "ValueError"
    assert lines[3]["error"] == "MalformedInput" and "line 4" in lines[3]["message"]
    assert lines[4] == {"result": 5}
    assert len(lines) == 5


def test_ndjson_run_of_many_items_keeps_their_order(server: Server) -> None:
    items = list(range(5000))
    reply = post(server.url, "/run", ndjson=items)
    assert [line["result"] for line in reply.lines()] == items


def test_jobs_answer_202_at_once_then_the_result(server: Server) -> None:
    reply = post(server.url, "/jobs", {"sleep": 0.05, "then": 42})
    assert reply.status == 202
    job_id = reply.json()["id"]
    assert reply.headers["Location"] == f"/jobs/{job_id}"
    done = get(server.url, f"/jobs/{job_id}?wait=20").json()
    assert done == {"id": job_id, "state": "done", "result": 42}
    failed = post(server.url, "/jobs", "raise").json()["id"]
    body = get(server.url, f"/jobs/{failed}?wait=20").json()
    assert body["state"] == "failed" and body["error"] == "ValueError"
    assert "traceback" not in body


def test_a_job_is_queued_then_running_then_done(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    stage = spindle.cpu(jobs.wait_for_file, workers=1, batch_size=1)
    with Server(stage, port=0) as s:
        first = post(s.url, "/jobs", {"path": str(gate), "n": 1}).json()["id"]
        assert _wait(lambda: s.service.runner.drawn >= 1)
        second = post(s.url, "/jobs", {"path": str(gate), "n": 2}).json()["id"]
        assert get(s.url, f"/jobs/{first}").json()["state"] == "running"
        assert get(s.url, f"/jobs/{second}").json()["state"] in ("queued", "running")
        assert get(s.url, f"/jobs/{first}?wait=0.05").json()["state"] == "running"
        gate.touch()
        assert get(s.url, f"/jobs/{second}?wait=20").json() == {
            "id": second,
            "state": "done",
            "result": 2,
        }


def test_ndjson_jobs_give_one_id_per_item(server: Server) -> None:
    ids = post(server.url, "/jobs", ndjson=[1, 2, 3]).json()["ids"]
    assert len(set(ids)) == 3
    results = [get(server.url, f"/jobs/{i}?wait=20").json()["result"] for i in ids]
    assert results == [1, 2, 3]


def test_an_idempotency_key_gives_the_same_id_and_one_run(server: Server) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = post(server.url, "/jobs", 17, headers=headers)
    again = post(server.url, "/jobs", 17, headers=headers)
    assert first.status == again.status == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    get(server.url, f"/jobs/{first.json()['id']}?wait=20")
    assert server.service.accepted == 1


def test_unknown_job_is_404_and_a_bad_wait_is_400(server: Server) -> None:
    assert get(server.url, "/jobs/nope").status == 404
    assert get(server.url, "/jobs/nope?wait=-1").status == 400
    assert get(server.url, "/jobs/nope?wait=abc").json()["error"] == "BadParameter"


def test_bad_requests_are_refused_with_json_naming_the_problem(server: Server) -> None:
    reply = post(server.url, "/run", raw=b'{"a": ', headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert reply.json()["error"] == "MalformedInput"
    assert "not JSON" in reply.json()["message"]
    reply = post(
        server.url, "/jobs", raw=b"1\n{\n", headers={"Content-Type": "application/x-ndjson"}
    )
    assert reply.status == 400 and "line 2" in reply.json()["message"]
    assert server.service.accepted == 0  # nothing of a bad batch was accepted
    missing = get(server.url, "/nowhere")
    assert missing.status == 404 and missing.json()["error"] == "Not Found"
    wrong = get(server.url, "/run")
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]


def test_a_body_over_max_body_is_413() -> None:
    with Server(spindle.cpu(jobs.echo, workers=1), port=0, max_body=1000) as s:
        reply = post(s.url, "/run", "x" * 2000)
        assert reply.status == 413
        assert "max-body" in reply.json()["message"]
        assert post(s.url, "/run", "x" * 10).status == 200


def test_health_stats_and_metrics(server: Server) -> None:
    post(server.url, "/run", 1)
    assert get(server.url, "/healthz").json()["status"] == "ok"
    stats = get(server.url, "/stats").json()
    assert stats["serve"]["accepted"] >= 1
    assert stats["stages"][0]["name"] == "behave"
    metrics = get(server.url, "/metrics").body.decode()
    assert "spindle_serve_requests_total" in metrics
    assert "spindle_serve_active 0.0" in metrics


def test_past_max_queue_requests_get_429_with_retry_after(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    stage = spindle.cpu(jobs.wait_for_file, workers=1, batch_size=1)
    with Server(stage, port=0, max_queue=2) as s:
        ids = [post(s.url, "/jobs", {"path": str(gate), "n": i}).json()["id"] for i in range(2)]
        refused = post(s.url, "/jobs", {"path": str(gate), "n": 3})
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert post(s.url, "/run", {"path": str(gate), "n": 4}).status == 429
        gate.touch()
        assert [get(s.url, f"/jobs/{i}?wait=20").json()["result"] for i in ids] == [0, 1]
        assert post(s.url, "/run", {"path": str(gate), "n": 5}).json() == {"result": 5}
        assert s.service.refused == 2


def test_beyond_loopback_a_token_is_required_and_checked() -> None:
    with pytest.raises(TokenRequired):
        Server(jobs.echo, host="0.0.0.0", port=0)
    with Server(spindle.cpu(jobs.echo, workers=1), port=0, token="s3cret") as s:
        assert post(s.url, "/run", 1).status == 401
        assert post(s.url, "/run", 1, headers={"Authorization": "Bearer nope"}).status == 401
        ok = post(s.url, "/run", 1, headers={"Authorization": "Bearer s3cret"})
        assert ok.json() == {"result": 1}


def test_a_pipeline_of_several_stages_and_an_async_job_are_served() -> None:
    pipeline = spindle.Pipeline(
        [spindle.thread(jobs.double, workers=2), spindle.cpu(jobs.async_double, workers=1)]
    )
    with Server(pipeline, port=0) as s:
        assert post(s.url, "/run", 5).json() == {"result": 20}
        assert [x["result"] for x in post(s.url, "/run", ndjson=[1, 2]).lines()] == [4, 8]


def test_stopping_refuses_new_work_and_finishes_what_is_in_flight(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    stage = spindle.cpu(jobs.wait_for_file, workers=1, batch_size=1)
    s = Server(stage, port=0, grace=30).start()
    answers: list[Any] = []
    inflight = threading.Thread(
        target=lambda: answers.append(post(s.url, "/run", {"path": str(gate), "n": 7}))
    )
    inflight.start()
    try:
        # Wait until the job is in the run, then stop the server in another thread.
        deadline_ok = _wait(lambda: s.service.runner.drawn >= 1)
        assert deadline_ok
        stopper = threading.Thread(target=s.stop)
        stopper.start()
        assert _wait(lambda: s.service.stopping)
        refused = post(s.url, "/run", 1)
        assert refused.status == 503
        assert get(s.url, "/healthz").status == 503
        gate.touch()
        inflight.join(30)
        stopper.join(30)
        assert not stopper.is_alive()
    finally:
        gate.touch()
        s.stop()
        inflight.join(30)
    assert answers[0].json() == {"result": 7}


def test_jobs_left_when_the_grace_ends_get_503(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    stage = spindle.cpu(jobs.wait_for_file, workers=1, batch_size=1)
    s = Server(stage, port=0, grace=0.2).start()
    try:
        ids = [post(s.url, "/jobs", {"path": str(gate), "n": i}).json()["id"] for i in range(3)]
        assert _wait(lambda: s.service.runner.drawn >= 1)
    finally:
        s.stop()
    for i in ids:
        job = s.service.jobs[i]
        assert job.state == "failed" and job.value.error == "ServerStopping"


def _wait(predicate: Any, timeout: float = 20.0) -> bool:
    """Wait for ``predicate`` on an event that is never set: a bounded poll of state
    that only the server's threads change."""
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        event.wait(0.01)
    return bool(predicate())


def test_the_server_leaves_no_worker(tmp_path: Path) -> None:
    import psutil

    with Server(spindle.cpu(jobs.whoami, workers=2), port=0) as s:
        pids = {post(s.url, "/run", i).json()["result"] for i in range(20)}
    assert pids and os.getpid() not in pids
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_key_dispatch_sends_a_key_to_one_worker() -> None:
    stage = spindle.cpu(jobs.whoami, workers=3, dispatch="key:user")
    with Server(stage, port=0) as s:
        items = [{"user": f"u{i % 5}", "i": i} for i in range(100)]
        pids = [line["result"] for line in post(s.url, "/run", ndjson=items).lines()]
    by_user: dict[str, set[int]] = {}
    for item, pid in zip(items, pids, strict=True):
        by_user.setdefault(item["user"], set()).add(pid)
    assert all(len(p) == 1 for p in by_user.values()), by_user
    assert len(set(pids)) > 1  # five keys over three workers use more than one


def test_weighted_dispatch_is_honoured_through_the_server(tmp_path: Path) -> None:
    stage = spindle.cpu(jobs.whoami, workers=2, dispatch="weighted:3,1", batch_size=1)
    with Server(stage, port=0) as s:
        pids = [line["result"] for line in post(s.url, "/run", ndjson=list(range(400))).lines()]
    counts = sorted(pids.count(p) for p in set(pids))
    assert len(counts) == 2
    assert abs(counts[1] / 400 - 0.75) <= 0.05, counts


def test_a_journal_keeps_answers_across_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "serve.journal"
    stage = spindle.cpu(jobs.behave, workers=1)
    with Server(stage, port=0, journal=journal) as s:
        ok = post(s.url, "/jobs", {"sleep": 0, "then": "fine"}).json()["id"]
        bad = post(s.url, "/jobs", "raise", headers={"Idempotency-Key": "b"}).json()["id"]
        assert get(s.url, f"/jobs/{ok}?wait=20").json()["state"] == "done"
        assert get(s.url, f"/jobs/{bad}?wait=20").json()["state"] == "failed"
        assert s.service.store is not None and s.service.store.commits >= 1
    with Server(stage, port=0, journal=journal) as s:
        assert get(s.url, f"/jobs/{ok}").json() == {"id": ok, "state": "done", "result": "fine"}
        failed = get(s.url, f"/jobs/{bad}").json()
        assert failed["state"] == "failed" and failed["error"] == "ValueError"
        assert "traceback" not in failed
        assert "asked to fail" in get(s.url, f"/jobs/{bad}?traceback=1").json()["traceback"]
        again = post(s.url, "/jobs", "raise", headers={"Idempotency-Key": "b"})
        assert again.json()["id"] == bad and s.service.accepted == 0


def test_quick_requests_do_not_wait_behind_a_long_one(tmp_path: Path) -> None:
    """A worker on a long job gets no more work while another worker is free: quick
    requests are all answered while the long one still runs (were any sent to its
    worker, it would wait for the gate, which opens only at the end)."""
    gate = tmp_path / "go"
    stage = spindle.cpu(jobs.wait_for_file, workers=2)
    with Server(stage, port=0) as s:
        slow = post(s.url, "/jobs", {"path": str(gate), "n": -1}).json()["id"]
        assert _wait(lambda: s.service.runner.drawn >= 1)
        threading.Event().wait(0.2)  # the long job has now run past STUCK (50 ms)
        # Eight at a time, so that the free worker has batches pending as well.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            quick = list(
                pool.map(
                    lambda i: post(s.url, "/run", {"path": str(tmp_path), "n": i}, timeout=10),
                    range(80),
                )
            )
        assert [r.json() for r in quick] == [{"result": i} for i in range(80)]
        assert get(s.url, f"/jobs/{slow}").json()["state"] == "running"
        gate.touch()
        assert get(s.url, f"/jobs/{slow}?wait=20").json()["result"] == -1
