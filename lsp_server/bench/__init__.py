"""Benchmarks: measured on the running machine, reported as medians, never asserted in tests."""
