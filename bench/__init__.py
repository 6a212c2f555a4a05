"""Side-by-side speed benchmarks: ``python -m bench`` (the docs' Performance page is generated
from its results)."""
