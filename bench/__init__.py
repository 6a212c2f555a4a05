"""Side-by-side speed benchmarks: ``python -m bench`` (see README, "Performance")."""
