"""Rollouts, trainer side: the driver that steps a rollout and the analysis it decides by."""
