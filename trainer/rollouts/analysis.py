"""The analysis at each step of a rollout: advance, wait or roll back, with the figures.

The judge's verdicts on shadow pairs (both versions answered the same live prompt) are tested
sequentially (win_rate.py), once for "better" and once for "worse": a driver may evaluate
every few seconds without inflating the error rate, and the log ratios are recorded with
every decision.

Application scores and the guards (failed requests, empty answers, time per token) can only
roll a version back, never advance it. The scores' test is a fixed-sample z-test looked at
repeatedly, so it asks for ten times the confidence the plan states.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Literal

from loraloop.adapters.rollouts.book import RolloutRecord, StepEvidence
from loraloop.adapters.rollouts.counts import p95_time_per_token_ms

from ..win_rate import log_mixture_ratio, wilson_interval

Action = Literal["advance", "wait", "rollback"]
MIN_SCORES = 5  # per version, before the application scores are compared


@dataclass(frozen=True)
class Decision:
    action: Action
    cause: str | None  # why a rollback: judge, scores, errors, empty_answers, latency, undecided
    reason: str  # in words, with the figures
    figures: Mapping[str, object]

    def record(self) -> dict:
        """As the registry keeps it (rollout.decision, the event's detail)."""
        return {"action": self.action, "cause": self.cause, "reason": self.reason, **self.figures}


def decide(
    rollout: RolloutRecord,
    evidence: StepEvidence,
    now: datetime,
    p95: Callable[[Mapping[str, int]], float | None] = p95_time_per_token_ms,
) -> Decision:
    plan = rollout.plan
    watching = rollout.watching
    verdicts = evidence.verdicts
    wins, losses = verdicts.get("candidate", 0), verdicts.get("baseline", 0)
    decided = wins + losses
    threshold = math.log(1 / plan.error_rate)
    better, worse = log_mixture_ratio(wins, losses), log_mixture_ratio(losses, wins)
    z = NormalDist().inv_cdf(1 - plan.error_rate)
    low, high = wilson_interval(wins, decided, z)
    requests = {version: counts.get("requests", 0) for version, counts in evidence.counts.items()}
    elapsed = (now - rollout.step_started_at).total_seconds()
    figures = {
        "at": now.isoformat(),
        "step": rollout.step,
        "stage": rollout.stage,
        "elapsed_s": round(elapsed, 1),
        "wins": wins,
        "losses": losses,
        "ties": verdicts.get("tie", 0),
        "abstained": verdicts.get("abstained", 0),
        "unjudged": evidence.unjudged,
        "win_rate": round(wins / decided, 4) if decided else None,
        "win_rate_low": round(low, 4),
        "win_rate_high": round(high, 4),
        "log_lr_better": round(better, 3),
        "log_lr_worse": round(worse, 3),
        "threshold": round(threshold, 3),
        "requests": {str(v): n for v, n in sorted(requests.items())},
    }
    said = (
        f"judge: candidate won {wins} of {decided} decided comparisons "
        f"(win rate interval {low:.2f}-{high:.2f}; log LR better {better:.2f}, worse "
        f"{worse:.2f}, threshold {threshold:.2f})"
    )

    if worse >= threshold:
        return Decision("rollback", "judge", f"{said}: significantly worse", figures)
    for cause, problem in _serving_problems(rollout, evidence, p95, figures):
        return Decision("rollback", cause, f"{problem}; {said}", figures)
    drop = _scores_drop(rollout, evidence, figures)
    if drop is not None:
        return Decision("rollback", "scores", f"{drop}; {said}", figures)

    if watching:
        return _watch(plan, elapsed, decided, said, figures)

    step = plan.steps[rollout.step]
    missing = []
    served = sum(requests.values())
    if served < step.min_requests:
        missing.append(f"{served} of {step.min_requests} requests")
    if decided < step.min_comparisons:
        missing.append(f"{decided} of {step.min_comparisons} decided comparisons")
    if better < threshold:
        missing.append("no significant win yet")
    if not missing:
        return Decision("advance", None, f"{said}: significantly better", figures)
    if elapsed >= step.max_seconds:
        undecided = f"undecided after {step.max_seconds} s ({', '.join(missing)}); {said}"
        if plan.undecided == "advance":
            return Decision("advance", None, undecided, figures)
        return Decision("rollback", "undecided", undecided, figures)
    return Decision("wait", None, f"waiting: {', '.join(missing)}; {said}", figures)


def _watch(plan, elapsed: float, decided: int, said: str, figures: dict) -> Decision:
    """The watch ends at its window's end: complete (advance) once it made its comparisons
    without a significant drop; with fewer, as the plan's `undecided` says, never by default
    in the candidate's favour."""
    window = plan.watch
    if elapsed < window.max_seconds:
        return Decision(
            "wait", None, f"watching ({elapsed:.0f} of {window.max_seconds} s); {said}", figures
        )
    if decided >= window.min_comparisons:
        return Decision(
            "advance",
            None,
            f"watch window of {window.max_seconds} s over without a significant drop; {said}",
            figures,
        )
    undecided = (
        f"watch window of {window.max_seconds} s over with {decided} of "
        f"watch.min_comparisons {window.min_comparisons} decided comparisons; {said}"
    )
    if plan.undecided == "advance":
        return Decision("advance", None, f"{undecided} (the plan's undecided: advance)", figures)
    return Decision("rollback", "undecided", undecided, figures)


def _serving_problems(
    rollout: RolloutRecord,
    evidence: StepEvidence,
    p95: Callable[[Mapping[str, int]], float | None],
    figures: dict,
):
    """The guards, in canary steps, where both versions serve users in the same period."""
    if rollout.watching or rollout.canary_percent == 0:
        return
    guards = rollout.plan.guards
    ours = evidence.counts.get(rollout.candidate, {})
    theirs = evidence.counts.get(rollout.baseline, {})
    if min(ours.get("requests", 0), theirs.get("requests", 0)) < guards.min_requests:
        return
    for name, cause, limit in (
        ("errors", "errors", guards.max_error_rate_increase),
        ("empty", "empty_answers", guards.max_empty_rate_increase),
    ):
        rate = ours.get(name, 0) / ours["requests"]
        live_rate = theirs.get(name, 0) / theirs["requests"]
        figures[f"{name}_rate"] = {"candidate": round(rate, 4), "baseline": round(live_rate, 4)}
        if rate - live_rate > limit:
            yield (
                cause,
                (
                    f"{name.replace('empty', 'empty answers')}: {rate:.1%} of the "
                    f"candidate's requests against {live_rate:.1%} of the live "
                    f"version's (at most {limit:.1%} more allowed)"
                ),
            )
    ours_p95, theirs_p95 = p95(ours), p95(theirs)
    if ours_p95 is not None and theirs_p95:
        ratio = ours_p95 / theirs_p95
        figures["p95_ms_per_token"] = {"candidate": ours_p95, "baseline": theirs_p95}
        if ratio > guards.max_time_per_token_ratio:
            yield (
                "latency",
                (
                    f"p95 time per token {ours_p95:.1f} ms against the live "
                    f"version's {theirs_p95:.1f} ms ({ratio:.2f}x, at most "
                    f"{guards.max_time_per_token_ratio}x allowed)"
                ),
            )


def _scores_drop(rollout: RolloutRecord, evidence: StepEvidence, figures: dict) -> str | None:
    ours = evidence.scores.get(rollout.candidate, ())
    theirs = evidence.scores.get(rollout.baseline, ())
    if min(len(ours), len(theirs)) < MIN_SCORES:
        return None
    gap = statistics.fmean(ours) - statistics.fmean(theirs)
    stderr = math.sqrt(
        statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)
    )
    strict_z = NormalDist().inv_cdf(1 - rollout.plan.error_rate / 10)
    figures["scores"] = {
        "candidate_mean": round(statistics.fmean(ours), 4),
        "baseline_mean": round(statistics.fmean(theirs), 4),
        "candidate_n": len(ours),
        "baseline_n": len(theirs),
    }
    if (gap < 0) if stderr == 0 else (gap / stderr < -strict_z):
        return (
            f"application scores: mean {statistics.fmean(ours):.3f} over {len(ours)} "
            f"against the live version's {statistics.fmean(theirs):.3f} over "
            f"{len(theirs)} (z {'-inf' if stderr == 0 else f'{gap / stderr:.2f}'}, "
            f"bound {-strict_z:.2f})"
        )
    return None
