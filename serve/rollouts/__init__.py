"""The server's side of rollouts: guard counts, gauges, rollout traffic, shadow answers."""
