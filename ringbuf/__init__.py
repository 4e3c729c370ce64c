"""ringmatch ringbuf package."""
