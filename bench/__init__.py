"""voxtrio's benchmark suite: `python -m bench` (or `nox -s bench`); see docs/BENCHMARKS.md."""
