"""Benchmarks: the bridge and its baselines, measured side by side in one run."""
