"""Index, blob tiers, the shared query model, ingest and the retrieve plan."""
