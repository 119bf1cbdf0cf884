"""Policies applied around the work: batching, retries (full-jitter backoff), adaptive
concurrency limits (AIMD), and the clock that waits are made on, which tests replace."""
