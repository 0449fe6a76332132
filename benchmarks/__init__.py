"""Benchmark scripts, one per performance question; run each as `python benchmarks/<name>.py` (see README.md)."""
