"""The trainer sidecar: turns each adapter's pending feedback into a gated new version.

One run: claim the adapter's pending feedback (under a lease, renewed while training), build
DPO pairs, train from the live version, evaluate the candidate against it, register it with
its lineage and metrics (the feedback becomes consumed in that same transaction), then
promote it if the gate passed and the policy allows, or reject it with the failing checks as
the reason. Killed at any point, it leaves no version half-made and no feedback lost.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError

from loraloop.adapters.errors import Conflict
from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.records import VersionRecord
from loraloop.adapters.registry import NO_LIVE_VERSION, AdapterRegistry, NewVersion
from loraloop.adapters.schema import utcnow
from loraloop.adapters.training import Claim, ClaimedFeedback, LeaseLost, PendingWork, TrainingBook

from .dpo import train_dpo
from .evaluate import Scorer
from .gate import GateReport, evaluate_candidate
from .lease import LeaseKeeper
from .pairs import PreferencePair, Prompt, ScoredCompletion, build_pairs, split_held_out
from .policy import TrainingPolicy

logger = logging.getLogger(__name__)

MIN_PAIRS_EVER = 4  # below this no held-out split means anything
RETRY_AFTER_S = 60  # an adapter whose feedback made too few pairs waits this long


def as_prompt(stored: dict) -> Prompt:
    if "text" in stored:
        return stored["text"]
    return tuple((m["role"], m["content"]) for m in stored["messages"])


def pairs_of(feedback: tuple[ClaimedFeedback, ...], policy: TrainingPolicy) -> list[PreferencePair]:
    preferences = [PreferencePair(as_prompt(f.prompt), f.chosen, f.rejected, (f.id,))
                   for f in feedback if f.kind == "preference"]
    scored = [ScoredCompletion(as_prompt(f.prompt), f.completion, f.score, f.id)
              for f in feedback if f.kind == "score"]
    return build_pairs(preferences, scored, min_score_gap=policy.score_gap)


def is_due(work: PendingWork, policy: TrainingPolicy) -> bool:
    if work.queued:
        return True
    if not policy.enabled or work.pending < MIN_PAIRS_EVER:
        return False
    waited = work.oldest is not None and utcnow() - work.oldest >= timedelta(
        seconds=policy.max_wait_s)
    return work.pending >= policy.min_pairs or waited


class Trainer:
    def __init__(self, registry: AdapterRegistry, training: TrainingBook, base_model: Path, *,
                 worker: str, lease_s: float) -> None:
        self.registry, self.training = registry, training
        self.base_model, self.worker, self.lease_s = base_model, worker, lease_s
        self._scorer: Scorer | None = None
        self._resting: dict[str, float] = {}  # adapter -> monotonic time it may run again
        registry.store.staging.mkdir(parents=True, exist_ok=True)

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:  # loads the base model: only once there is work
            self._scorer = Scorer(self.base_model)
        return self._scorer

    def run_forever(self, poll_s: float, stopping: threading.Event) -> None:
        """Until `stopping` is set: a run in progress then finishes, and no new one starts.
        (A run cut short by SIGKILL is abandoned instead: its lease lapses.)"""
        logger.info("trainer %s watching for feedback", self.worker)
        while not stopping.is_set():
            try:
                ran = self.run_once()
            except Exception:  # e.g. the database is away: keep the sidecar up, try again
                logger.exception("trainer loop error; retrying in %.1f s", poll_s)
                ran = False
            if not ran:
                stopping.wait(poll_s)
        logger.info("trainer %s stopped", self.worker)

    def run_once(self) -> bool:
        """Run the first due adapter's training; False when nothing was due."""
        for work in self.training.pending_work():
            try:
                policy = TrainingPolicy.model_validate(work.policy or {})
            except ValidationError as exc:
                logger.error("%s: stored training policy is invalid, skipped: %s",
                             work.adapter_id, exc)
                continue
            resting = self._resting.get(work.adapter_id, 0) > time.monotonic()
            if is_due(work, policy) and (work.queued or not resting):
                self.run(work.adapter_id, policy)
                return True
        return False

    def run(self, adapter_id: str, policy: TrainingPolicy) -> None:
        claim = self.training.claim(adapter_id, worker=self.worker, lease_s=self.lease_s)
        logger.info("run %d: %s, %d feedback rows, from version %s", claim.run_id, adapter_id,
                    len(claim.feedback), claim.parent_version)
        try:
            with LeaseKeeper(self.training, claim.run_id, worker=self.worker,
                             lease_s=self.lease_s) as lease:
                self._train_and_decide(claim, policy, lease)
        except LeaseLost:
            logger.error("run %d lost its lease; another run owns its feedback now", claim.run_id)
        except Exception as exc:
            logger.exception("run %d failed", claim.run_id)
            self.training.finish(claim.run_id, "failed", reason=f"{type(exc).__name__}: {exc}",
                                 release=True)

    def _train_and_decide(self, claim: Claim, policy: TrainingPolicy,
                          lease: LeaseKeeper) -> None:
        pairs = pairs_of(claim.feedback, policy)
        if len(pairs) < MIN_PAIRS_EVER:
            self._resting[claim.adapter_id] = time.monotonic() + RETRY_AFTER_S
            self.training.finish(claim.run_id, "failed", release=True, reason=(
                f"{len(pairs)} preference pairs from {len(claim.feedback)} feedback rows; "
                f"at least {MIN_PAIRS_EVER} are needed"))
            return
        train, held_out = split_held_out(pairs, policy.held_out_fraction, policy.seed)
        live = self._version_dir(claim.adapter_id, claim.parent_version)
        with tempfile.TemporaryDirectory(dir=self.registry.store.staging,
                                         prefix="train-") as scratch:
            candidate = Path(scratch)
            result = train_dpo(self.base_model, live, train, policy, candidate,
                               on_progress=lease.report)
            drift = [(("user", p),) for p in policy.golden_prompts] or [
                pair.prompt for pair in held_out]
            report = evaluate_candidate(self.scorer, candidate=candidate, live=live,
                                        held_out=held_out, drift_prompts=drift, train=result,
                                        policy=policy)
            version = self._register(claim, candidate, report, len(pairs), policy)
        self._decide(claim, version, report, policy)

    def _version_dir(self, adapter_id: str, number: int | None) -> Path | None:
        if number is None:
            return None
        return self.registry.path_of(self.registry.version(adapter_id, number))

    def _register(self, claim: Claim, candidate: Path, report: GateReport, pairs: int,
                  policy: TrainingPolicy) -> VersionRecord:
        files = {name: candidate / name for name in ADAPTER_FILES}
        # Lineage: the run (whose feedback rows name this version once consumed), the data
        # and the hyperparameters it was trained with.
        lineage = {"run": claim.run_id, "pairs": pairs, "feedback": len(claim.feedback),
                   "beta": policy.beta, "learning_rate": policy.learning_rate,
                   "epochs": policy.epochs, "batch_size": policy.batch_size,
                   "seed": policy.seed}
        new = NewVersion(source="trainer", parent_version=claim.parent_version,
                         metrics=report.metrics,
                         tags={name: str(value) for name, value in lineage.items()},
                         reason=f"training run {claim.run_id}")

        def consume(session, version: VersionRecord) -> None:
            self.training.consume(claim.run_id, version.number, worker=self.worker, pairs=pairs,
                                  session=session)

        version, _ = self.registry.register(claim.adapter_id, files, new,
                                            actor=f"trainer:{self.worker}", within=consume)
        return version

    def _decide(self, claim: Claim, version: VersionRecord, report: GateReport,
                policy: TrainingPolicy) -> None:
        adapter_id, actor = claim.adapter_id, f"trainer:{self.worker}"
        if not report.promote:
            why = report.failures() or (
                "held-out accuracy gain over the live version is below the policy's "
                f"promote_margin of {policy.gate.promote_margin}")
            self.registry.reject(adapter_id, version.number, actor=actor,
                                 reason=f"gate failed: {why}")
            self._finish(claim, "rejected", report, f"gate failed: {why}")
        elif not policy.auto_promote:
            self._finish(claim, "candidate", report, "gate passed; auto-promote is off")
        else:
            self._promote(claim, version, report)

    def _promote(self, claim: Claim, version: VersionRecord, report: GateReport) -> None:
        try:
            self.registry.promote(claim.adapter_id, version.number,
                                  expected_live=claim.parent_version or NO_LIVE_VERSION,
                                  actor=f"trainer:{self.worker}", reason=_gate_summary(report))
        except Conflict as exc:  # someone promoted or rolled back while this run trained
            self._finish(claim, "candidate", report, f"not promoted: {exc.message}")
            return
        self._finish(claim, "promoted", report, _gate_summary(report))

    def _finish(self, claim: Claim, status: str, report: GateReport, reason: str) -> None:
        logger.info("run %d: %s (%s)", claim.run_id, status, reason)
        self.training.finish(claim.run_id, status, reason=reason, metrics=report.metrics)


def _gate_summary(report: GateReport) -> str:
    return "gate passed: " + ", ".join(f"{c.name} {c.value:.3g}" for c in report.checks)


def remove_leftovers(staging: Path) -> None:
    """Scratch directories of a trainer killed mid-run: never registered, safe to delete."""
    for leftover in staging.glob("train-*"):
        shutil.rmtree(leftover, ignore_errors=True)
