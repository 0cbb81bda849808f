"""The counters servers keep for each version during each step of a rollout, by name, and
what a driver makes of them.

Servers add their counts to the registry (RolloutBook.add_counts), one row per rollout,
step, version and name; StepEvidence.counts hands them back as {name: value} per version.
Time per output token is kept as a histogram of fixed buckets, so that every server's
counts add up to the histogram of all of them, from which a quantile is read.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping

REQUESTS = "requests"  # requests the version served (counted when admitted)
ERRORS = "errors"  # of those, failed after admission, or ended by an engine error
EMPTY = "empty"  # of those, answered with nothing but whitespace in every choice

# Upper edges of the time-per-output-token buckets, in ms. Close enough together that a
# ratio like the guard's 1.5 between two versions' p95 shows.
TPOT_EDGES_MS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000)
# Bucket names, in order: "tpot_le_1" ... "tpot_le_1000", then "tpot_le_inf". Each counts
# the requests whose time per token fell in it alone (not cumulative); requests with fewer
# than two output tokens have no time per token and are in none.
TPOT_BUCKETS = (*(f"tpot_le_{edge}" for edge in TPOT_EDGES_MS), "tpot_le_inf")


def tpot_bucket(ms: float) -> str:
    """The bucket a request with `ms` per output token falls in."""
    return TPOT_BUCKETS[bisect_left(TPOT_EDGES_MS, ms)]


def time_per_token_quantile_ms(counts: Mapping[str, int], q: float) -> float | None:
    """The q-quantile of time per output token, in ms, from one version's counts (other
    names are ignored). Linear within its bucket, as Prometheus' histogram_quantile; a
    quantile in the last bucket reads as its lower edge (1000 ms), a lower bound, so that
    the figure stays a finite number in a JSON decision. None when no request was timed."""
    if not 0 < q <= 1:
        raise ValueError(f"the quantile must be in (0, 1], not {q}")
    sizes = [max(int(counts.get(name, 0)), 0) for name in TPOT_BUCKETS]
    rank, seen = q * sum(sizes), 0
    if rank == 0:
        return None
    for index, size in enumerate(sizes[:-1]):
        if size and seen + size >= rank:
            lower = TPOT_EDGES_MS[index - 1] if index else 0.0
            return lower + (TPOT_EDGES_MS[index] - lower) * (rank - seen) / size
        seen += size
    return float(TPOT_EDGES_MS[-1])


def p95_time_per_token_ms(counts: Mapping[str, int]) -> float | None:
    """The guard's figure: p95 time per output token, in ms (see the quantile above)."""
    return time_per_token_quantile_ms(counts, 0.95)
