"""ringmatch publisher package."""
