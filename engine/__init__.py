"""ringmatch engine package."""
