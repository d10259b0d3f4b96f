"""Lightning data modules reading shard format v1."""
