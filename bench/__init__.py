"""Benchmark harness: the relay against a fast fake upstream, measured beside direct calls.

Run `python -m bench.run` from the repository root; results go to bench/results/latest.json.
"""
