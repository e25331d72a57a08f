"""Benchmarks: each module times a vectorized implementation against a naive reference (`main(argv)`)."""
