"""The public API is exactly what spindle/__init__.py exports."""

import spindle

EXPECTED = {
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
}


def test_public_names_are_pinned() -> None:
    assert set(spindle.__all__) == EXPECTED


def test_every_public_name_exists_and_errors_share_one_base() -> None:
    for name in spindle.__all__:
        assert hasattr(spindle, name), name
    for name in ("ConfigError", "JobError", "WorkerCrashed", "Timeout", "Unpicklable"):
        assert issubclass(getattr(spindle, name), spindle.SpindleError)
