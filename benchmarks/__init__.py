"""Benchmarks of the engine, run with `make bench` (`python -m benchmarks.run`)."""
