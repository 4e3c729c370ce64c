"""ringmatch replicator package."""
