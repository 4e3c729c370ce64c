"""ringmatch perf package."""
