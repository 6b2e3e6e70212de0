"""Benchmarks (``make bench``): results go to docs/benchmarks/*.json and are quoted in docs/BENCHMARKS.md."""
