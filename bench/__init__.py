"""leadbridge's benchmark: `python bench/run.py [--quick]` (see docs/performance.md)."""
