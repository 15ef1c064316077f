"""One module per on-disk dataset format, each producing the canonical tables."""
