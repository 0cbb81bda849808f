"""Transfers, trainer side: distilling an adapter onto another base, and the job runner."""
