"""Benchmarks for dbproxy; run them as modules, e.g. `python -m benchmarks.proxy_overhead`."""
