"""Benchmarks behind `sinkwatch bench`; results are recorded in docs/BENCHMARKS.md."""
