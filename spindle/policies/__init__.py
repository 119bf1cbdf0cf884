"""Policies a stage applies around its executor: batching (and later limits, retries)."""
