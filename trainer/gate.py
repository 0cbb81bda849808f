"""The promotion decision: is a trained candidate better than the live version, by enough
and with enough confidence, without drifting too far from it or from the base model?

With a judge, what users would read decides: the judged comparison of the two versions'
answers must show a significant win, and the likelihood figures on held-out pairs may only
veto a clear regression (significantly worse than live), never a failure to improve, since
log p(chosen) against log p(rejected) says little when the preferred answers are longer.
Comparisons the candidate won or lost with a markedly longer answer are left out of the win
rate (length control), so a candidate cannot win by answering longer. The comparisons are
drawn a batch at a time until the sequential test the rollouts use (win_rate.py)
decides better or worse, or the policy's budget is spent (undecided: not promoted, with what
was lacking named). Without a judge, the
held-out likelihoods decide. A candidate that changed nothing (KL from live under a floor,
or every answer the live version's) is reported as unchanged rather than judged.

Every figure measured goes into GateReport.metrics, so a rejected candidate records why.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy

from .dpo import TrainResult
from .evaluate import PreferenceScore, Scorer, weights_changed
from .judges import Judge
from .pairs import PreferencePair, Prompt
from .win_rate import log_mixture_ratio

Verdict = Literal["better", "worse", "undecided"]
# The win rate the held-out reserve is sized for: a clear improvement must be decidable.
DECIDABLE_WIN_RATE = 0.75


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class GateReport:
    checks: tuple[Check, ...]
    passed: bool  # every check passed: worth keeping as a candidate better than live
    promote: bool  # passed, and better than live by the judge or by promote_margin
    metrics: dict[str, float]  # every figure measured, flat, for the version's record
    unchanged: str | None = None  # why training changed nothing; None: it changed something

    def failures(self) -> str:
        """The failed checks as a rejection reason: "name: value vs threshold; ..."."""
        return "; ".join(
            f"{check.name}: {check.value:.4g} vs {check.threshold:.4g} ({check.detail})"
            for check in self.checks
            if not check.passed
        )


def evaluate_candidate(
    scorer: Scorer,
    *,
    candidate: Path,
    live: Path | None,
    held_out: Sequence[PreferencePair],
    drift_prompts: Sequence[Prompt],
    train: TrainResult,
    policy: TrainingPolicy,
    judge: Judge | None = None,
) -> GateReport:
    """Measure `candidate` against `live` (None: the base model) and decide. With a judge,
    also on what they answer: likelihoods on held-out pairs can improve while the answers
    users would read do not."""
    if not held_out or not drift_prompts:
        raise ValueError("the gate needs held-out pairs and drift prompts to measure on")
    gate = policy.gate
    ours, theirs = scorer.preference(candidate, held_out), scorer.preference(live, held_out)
    kl_base = scorer.mean_token_kl(candidate, None, drift_prompts)
    kl_live = None if live is None else scorer.mean_token_kl(candidate, live, drift_prompts)
    gain = margin_gain_lower_bound(ours, theirs, gate.confidence_z)
    likelihood = (
        _preference_checks(ours, theirs, gain, gate.min_accuracy, gate.confidence_z)
        if judge is None
        else _regression_checks(ours, theirs, gate.confidence_z)
    )
    checks = (
        *_training_checks(train, weights_changed(live, candidate)),
        *likelihood,
        *_drift_checks(kl_live, kl_base, gate.max_kl_from_live, gate.max_kl_from_base),
    )
    metrics = _metrics(train, ours, theirs, gain, kl_live, kl_base)
    judged = None
    if judge is not None:
        judged = judge_answers(scorer, judge, candidate, live, held_out, policy)
        checks += judged_checks(judged, policy, judge.name)
        metrics |= judged.metrics(gate.confidence_z)
    passed = all(check.passed for check in checks)
    return GateReport(
        checks=checks,
        passed=passed,
        # With a judge, its significant win over live's answers is the margin: held-out
        # accuracy on pairs the live version wrote itself is often at 1.0 for both already.
        promote=passed
        and (judge is not None or ours.accuracy >= theirs.accuracy + gate.promote_margin),
        metrics=metrics,
        unchanged=_unchanged(
            kl_base if kl_live is None else kl_live, judged, train, gate.unchanged_kl
        ),
    )


def _unchanged(
    kl: float, judged: JudgedAnswers | None, train: TrainResult, floor: float
) -> str | None:
    """Why the candidate is the live version over again, or None when it is not."""
    if judged is not None and judged.compared and judged.identical == judged.compared:
        why = f"all {judged.compared} of its judged answers equal the live version's"
    elif kl < floor:
        why = f"its mean per-token KL from the live version, {kl:.3g}, is below {floor:g}"
    else:
        return None
    return (
        f"training changed nothing: {why} (after {train.steps} steps; raise min_steps or "
        "learning_rate, or wait for more feedback)"
    )


@dataclass(frozen=True)
class JudgedAnswers:
    """The judge's comparisons of the candidate's and the live version's answers."""

    wins: int
    losses: int
    undecided: int  # the same answer from both, or the judge abstained
    identical: int = 0  # of the undecided: the same answer from both
    # Of the wins and losses: those where the candidate's answer was longer than the live
    # version's beyond the policy's tolerance; left out of the win rate under length control.
    longer_wins: int = 0
    longer_losses: int = 0
    length_control: bool = False
    candidate_words: float = 0.0  # mean answer length in words, every compared answer
    live_words: float = 0.0
    draws: int = 0  # answers per held-out prompt compared: the greedy one, then sampled ones

    @property
    def compared(self) -> int:
        return self.wins + self.losses + self.undecided

    @property
    def counted_wins(self) -> int:
        return self.wins - (self.longer_wins if self.length_control else 0)

    @property
    def counted_losses(self) -> int:
        return self.losses - (self.longer_losses if self.length_control else 0)

    @property
    def decided(self) -> int:
        """The comparisons the win rate is over."""
        return self.counted_wins + self.counted_losses

    @property
    def win_rate(self) -> float:
        return self.counted_wins / self.decided if self.decided else 0.0

    def lower_bound(self, z: float) -> float:
        """The Wilson score interval's lower end for the win rate (0 with nothing decided)."""
        n = self.decided
        if n == 0:
            return 0.0
        p = self.win_rate
        centre = p + z * z / (2 * n)
        spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (centre - spread) / (1 + z * z / n)

    def log_ratios(self) -> tuple[float, float]:
        """The sequential test's log likelihood ratios, for "better" and for "worse"."""
        return (
            log_mixture_ratio(self.counted_wins, self.counted_losses),
            log_mixture_ratio(self.counted_losses, self.counted_wins),
        )

    def verdict(self, z: float) -> Verdict:
        better, worse = self.log_ratios()
        threshold = sequential_threshold(z)
        return "better" if better >= threshold else "worse" if worse >= threshold else "undecided"

    def explain(self, z: float) -> str:
        """The verdict in words, naming what was lacking when there is none."""
        verdict = self.verdict(z)
        if verdict != "undecided":
            return f"significantly {verdict} after {self.compared} comparisons"
        lacking = [
            f"{self.identical} identical answers",
            f"{self.undecided - self.identical} abstentions",
            f"{self.counted_wins} wins and {self.counted_losses} losses",
        ]
        if self.length_control and self.longer_wins + self.longer_losses:
            lacking.append(f"{self.longer_wins + self.longer_losses} longer answers left out")
        return f"undecided after {self.compared} comparisons: {', '.join(lacking)}"

    def metrics(self, z: float) -> dict[str, float]:
        raw = self.wins / (self.wins + self.losses) if self.wins + self.losses else 0.0
        better, worse = self.log_ratios()
        return {
            "judged_comparisons": float(self.compared),
            "judged_draws": float(self.draws),
            "judged_log_lr_better": better,
            "judged_log_lr_worse": worse,
            "judged_threshold": sequential_threshold(z),
            "judged_wins": float(self.wins),
            "judged_losses": float(self.losses),
            "judged_undecided": float(self.undecided),
            "judged_identical": float(self.identical),
            "judged_longer_wins": float(self.longer_wins),
            "judged_longer_losses": float(self.longer_losses),
            "judged_win_rate": self.win_rate,
            "judged_win_rate_raw": raw,
            "judged_win_rate_lower_bound": self.lower_bound(z),
            "judged_words": self.candidate_words,
            "judged_words_live": self.live_words,
        }

    def summary(self, judge: str) -> str:
        held = (
            f"; {self.longer_wins + self.longer_losses} where its answer was longer left out"
            if self.length_control
            else ""
        )
        return (
            f"{judge} preferred the candidate's answer in {self.counted_wins} of the "
            f"{self.decided} comparisons it decided on held-out prompts ({self.undecided} "
            f"undecided, {self.identical} of them identical answers{held}; mean length "
            f"{self.candidate_words:.3g} words against live's {self.live_words:.3g})"
        )


def judge_answers(
    scorer: Scorer,
    judge: Judge,
    candidate: Path,
    live: Path | None,
    held_out: Sequence[PreferencePair],
    policy: TrainingPolicy,
) -> JudgedAnswers:
    """The candidate's answers against the live version's on each held-out prompt, one
    answer per prompt at a time: the greedy ones, then up to gate.judged_samples sampled at
    the serving temperature (the two versions draw the same random numbers, so a pair
    differs by what the versions learned), until the sequential test decides."""
    prompts = list(dict.fromkeys(pair.prompt for pair in held_out))  # each prompt once
    temperature, max_tokens = serving_temperature(policy), answer_tokens(policy)
    draws = [
        (0.0, 0),
        *(
            (temperature, policy.seed + draw)  # (temperature, seed)
            for draw in range(policy.gate.judged_samples)
        ),
    ]
    tally: Counter[str] = Counter()
    words: list[tuple[int, int]] = []
    for drawn, (draw_temperature, seed) in enumerate(draws, start=1):
        ours, theirs = (
            scorer.answers(version, prompts, max_tokens, temperature=draw_temperature, seed=seed)
            for version in (candidate, live)
        )
        for prompt, our, their in zip(prompts, ours, theirs, strict=True):
            winner = None if our == their else judge.compare(prompt, our, their).winner
            longer = _longer(our, their, policy.gate.length_tolerance)
            tally[_outcome(winner, our == their) + ("_longer" if longer else "")] += 1
            words.append((len(our.split()), len(their.split())))
        judged = _judged(tally, words, drawn, policy)
        if judged.verdict(policy.gate.confidence_z) != "undecided":
            break
    return judged


def _judged(
    tally: Counter[str], words: Sequence[tuple[int, int]], draws: int, policy: TrainingPolicy
) -> JudgedAnswers:
    wins, losses = tally["win"] + tally["win_longer"], tally["loss"] + tally["loss_longer"]
    identical = tally["identical"] + tally["identical_longer"]
    return JudgedAnswers(
        wins,
        losses,
        len(words) - wins - losses,
        identical,
        tally["win_longer"],
        tally["loss_longer"],
        policy.gate.length_control,
        statistics.fmean(ours for ours, _ in words) if words else 0.0,
        statistics.fmean(theirs for _, theirs in words) if words else 0.0,
        draws,
    )


def sequential_threshold(z: float) -> float:
    """The log likelihood ratio the sequential test decides at: log(1 / error rate), the
    error rate being the one-sided tail beyond z standard errors."""
    tail = 0.5 * math.erfc(z / math.sqrt(2))  # erfc keeps it above zero up to z = 10
    return -math.log(tail)


def held_out_prompts_needed(policy: TrainingPolicy) -> int:
    """The fewest held-out prompts on which the gate's tests can decide: two for the
    per-pair margin's standard error and, with a judge, enough that the comparisons within
    budget could show a DECIDABLE_WIN_RATE candidate significantly better."""
    if policy.judge is None:
        return 2
    threshold = sequential_threshold(policy.gate.confidence_z)
    needed = next(
        n
        for n in range(1, 100_000)
        if log_mixture_ratio(round(DECIDABLE_WIN_RATE * n), n - round(DECIDABLE_WIN_RATE * n))
        >= threshold
    )
    return max(2, math.ceil(needed / (1 + policy.gate.judged_samples)))


def _outcome(winner: int | None, identical: bool) -> str:
    if identical:
        return "identical"
    if winner is None:
        return "abstained"
    return {0: "win", 1: "loss"}.get(winner, "abstained")


def _longer(ours: str, theirs: str, tolerance: float) -> bool:
    """The candidate's answer is longer than the live one's by more than the tolerance:
    a share of the live answer's words, and at least 2 words."""
    mine, live = len(ours.split()), len(theirs.split())
    return mine - live > max(2, tolerance * live)


def golden_prompts(policy: TrainingPolicy) -> list[Prompt]:
    """The policy's golden user messages, as the prompts drift is measured on."""
    return [StoredPrompt.chat([("user", text)]) for text in policy.golden_prompts]


def serving_temperature(policy: TrainingPolicy) -> float:
    """The temperature users are served at, as far as the policy knows it."""
    return policy.sampling.temperature if policy.sampling else 1.0


def answer_tokens(policy: TrainingPolicy) -> int:
    """The longest answer the gate generates: as long as sampling asks for, else 32 tokens."""
    return policy.sampling.max_tokens if policy.sampling else 32


def judged_checks(judged: JudgedAnswers, policy: TrainingPolicy, judge: str) -> tuple[Check, ...]:
    gate = policy.gate
    better, _ = judged.log_ratios()
    checks: tuple[Check, ...] = (
        Check(
            "judged_win_rate_min",
            judged.decided > 0 and judged.win_rate >= gate.min_win_rate,
            judged.win_rate,
            gate.min_win_rate,
            judged.summary(judge),
        ),
        Check(
            "judged_win_rate_significant",
            judged.verdict(gate.confidence_z) == "better",
            better,
            sequential_threshold(gate.confidence_z),
            f"{judged.explain(gate.confidence_z)}; the sequential test's log likelihood "
            f"ratio for a better candidate, at {gate.confidence_z:g} standard errors",
        ),
    )
    if gate.max_length_ratio is not None:
        ratio = judged.candidate_words / max(judged.live_words, 1.0)
        checks += (
            Check(
                "length_ratio_max",
                ratio <= gate.max_length_ratio,
                ratio,
                gate.max_length_ratio,
                "the candidate's mean answer length against the live version's, in words",
            ),
        )
    return checks


def _training_checks(train: TrainResult, changed: bool) -> tuple[Check, ...]:
    return (
        Check(
            "trainable_parameters",
            train.trainable_parameters > 0,
            float(train.trainable_parameters),
            1.0,
            "the policy model had parameters to train",
        ),
        Check(
            "weights_changed",
            changed,
            float(changed),
            1.0,
            "the candidate's LoRA tensors differ from the live version's",
        ),
    )


def _preference_checks(
    ours: PreferenceScore, theirs: PreferenceScore, gain: float, min_accuracy: float, z: float
) -> tuple[Check, ...]:
    return (
        Check(
            "heldout_accuracy_vs_live",
            ours.accuracy >= theirs.accuracy,
            ours.accuracy,
            theirs.accuracy,
            "held-out preference accuracy at least the live version's",
        ),
        Check(
            "heldout_accuracy_min",
            ours.accuracy >= min_accuracy,
            ours.accuracy,
            min_accuracy,
            "held-out preference accuracy at least the policy's minimum",
        ),
        Check(
            "heldout_margin_vs_live",
            ours.mean_margin >= theirs.mean_margin,
            ours.mean_margin,
            theirs.mean_margin,
            "mean held-out log-prob margin at least the live version's",
        ),
        Check(
            "margin_gain_significant",
            gain > 0,
            gain,
            0.0,
            f"per-pair margin gain over live, mean - {z:g} standard errors, above zero",
        ),
    )


def _regression_checks(
    ours: PreferenceScore, theirs: PreferenceScore, z: float
) -> tuple[Check, ...]:
    """With a judge, the likelihoods only veto a significant drop against the live version:
    on the pairs one version orders right and the other wrong (McNemar, one-sided), and on
    the per-pair margin gain (its upper bound below zero)."""
    worse = sum(a <= 0 < b for a, b in zip(ours.margins, theirs.margins, strict=True))
    better = sum(b <= 0 < a for a, b in zip(ours.margins, theirs.margins, strict=True))
    drop = (worse - better) / math.sqrt(worse + better) if worse + better else 0.0
    upper = margin_gain_upper_bound(ours, theirs, z)
    return (
        Check(
            "heldout_accuracy_not_worse",
            drop <= z,
            drop,
            z,
            f"held-out accuracy {ours.accuracy:.3g} against the live version's "
            f"{theirs.accuracy:.3g}: {worse} pairs it now orders wrong, {better} it now "
            f"orders right; a veto above {z:g} standard errors",
        ),
        Check(
            "heldout_margin_not_worse",
            upper >= 0,
            upper,
            0.0,
            f"per-pair margin gain over live, mean + {z:g} standard errors; a veto below zero",
        ),
    )


def margin_gain_upper_bound(ours: PreferenceScore, theirs: PreferenceScore, z: float) -> float:
    """mean + z * stderr of the paired per-pair margin gains; +inf below two pairs."""
    gains = [a - b for a, b in zip(ours.margins, theirs.margins, strict=True)]
    if len(gains) < 2:
        return math.inf
    stderr = statistics.stdev(gains) / math.sqrt(len(gains))
    return statistics.fmean(gains) + z * stderr


def margin_gain_lower_bound(ours: PreferenceScore, theirs: PreferenceScore, z: float) -> float:
    """mean - z * stderr of the paired per-pair margin gains; -inf below two pairs, where
    no standard error exists."""
    gains = [a - b for a, b in zip(ours.margins, theirs.margins, strict=True)]
    if len(gains) < 2:
        return -math.inf
    stderr = statistics.stdev(gains) / math.sqrt(len(gains))
    return statistics.fmean(gains) - z * stderr


def _drift_checks(
    kl_live: float | None, kl_base: float, max_live: float, max_base: float
) -> tuple[Check, ...]:
    if kl_live is None:
        from_live = Check(
            "kl_from_live",
            True,
            0.0,
            max_live,
            "no live version: drift is measured from the base model alone",
        )
    else:
        from_live = Check(
            "kl_from_live",
            kl_live <= max_live,
            kl_live,
            max_live,
            "mean per-token KL (nats) from the live version",
        )
    return (
        from_live,
        Check(
            "kl_from_base",
            kl_base <= max_base,
            kl_base,
            max_base,
            "mean per-token KL (nats) from the base model",
        ),
    )


def _metrics(
    train: TrainResult,
    ours: PreferenceScore,
    theirs: PreferenceScore,
    gain: float,
    kl_live: float | None,
    kl_base: float,
) -> dict[str, float]:
    """Finite figures only, so the record is valid JSON."""
    metrics = {
        "heldout_pairs": float(len(ours.margins)),
        "heldout_accuracy": ours.accuracy,
        "heldout_accuracy_live": theirs.accuracy,
        "heldout_margin": ours.mean_margin,
        "heldout_margin_live": theirs.mean_margin,
        "kl_from_base": kl_base,
        "trainable_parameters": float(train.trainable_parameters),
        "train_steps": float(train.steps),
        "train_loss": train.final_loss,
    }
    if math.isfinite(gain):
        metrics["margin_gain_lower_bound"] = gain
    if kl_live is not None:
        metrics["kl_from_live"] = kl_live
    if train.train_reward_accuracy is not None:
        metrics["train_reward_accuracy"] = train.train_reward_accuracy
    return metrics
