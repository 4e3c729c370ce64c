"""ringmatch journaler package."""
