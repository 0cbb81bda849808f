"""Rollouts in the registry: their book, servers' counts, shadow comparisons' texts."""
