"""spindle's benchmark suite; run it with ``python -m bench`` (see bench/README.md)."""
