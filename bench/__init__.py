"""Benchmarks: run from the repository root as modules (``python -m bench.run``; see bench/README.md)."""
