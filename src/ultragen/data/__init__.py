"""Video data: WebDataset shards, token-balanced buckets, the shard DataModule, precompute and demo data."""
