"""Transfer jobs as the trainer runs them: an adapter version carried to another base model.

The trainer knows base models by name (its `transfer_targets`: name -> model directory); a
job names its target, never a path. One job: claim it under a lease (renewed while it works),
find the teacher's base among the bases this trainer knows (its own and its targets), refuse
bases of other tokenizers, gather the adapter's prompts, distill (distillation.py), then the
transfer gate on the held-out prompts: KL(teacher || student) at most the policy's bound
and greedy next-token agreement at least its threshold. Either way the student is registered
for the new base, with the figures as metrics and the lineage as tags; one that passed is made
live there (compare-and-swap, if the policy says so), one that failed is rejected, so that an
operator can inspect it. Nothing is registered before the end: a killed trainer leaves no
version, and its job is claimed again once the lease lapses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from loraloop.adapters.base_model import BaseModelInfo, local_model_dir
from loraloop.adapters.errors import Conflict
from loraloop.adapters.feedback import FeedbackBook
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import Registry, registry_on
from loraloop.adapters.schema import TransferStatus
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.transfer_policy import TransferPolicy
from loraloop.adapters.transfers import TransferClaim
from loraloop.adapters.versions import NO_LIVE_VERSION, NewVersion, VersionRecord

from ..lease import LeaseKeeper, Stopped
from ..scratch import scratch_dir
from .distillation import (
    TokenizerMismatch,
    TransferResult,
    TransferSettings,
    check_same_tokenizer,
    distill,
    held_out_count,
)

logger = logging.getLogger(__name__)


class Refused(Exception):
    """The job cannot be done as asked (an unknown base, other tokenizers, too few prompts):
    it fails with this reason and no version."""


@dataclass(frozen=True)
class KnownBase:
    name: str
    directory: Path
    info: BaseModelInfo


@dataclass(frozen=True)
class GatheredPrompts:
    prompts: list[StoredPrompt]
    sources: dict[str, int]  # where they came from: golden, sampling, recorded, feedback

    def lineage(self) -> str:
        return ", ".join(f"{source} {count}" for source, count in self.sources.items())


def gather_prompts(
    feedback: FeedbackBook, adapter_id: str, policy: TrainingPolicy, limit: int
) -> GatheredPrompts:
    """The adapter's prompts, each once, at most `limit`: the policy's golden and sampling
    prompts (an operator chose them), then recorded requests, then feedback's, newest first."""
    sources = {
        "golden": [StoredPrompt.chat([("user", text)]) for text in policy.golden_prompts],
        "sampling": [
            StoredPrompt.chat([("user", text)])
            for text in (policy.sampling.prompts if policy.sampling else [])
        ],
        "recorded": feedback.recorded_prompts(adapter_id, limit),
        "feedback": feedback.feedback_prompts(adapter_id, limit),
    }
    chosen: dict[StoredPrompt, str] = {}
    for source, prompts in sources.items():
        for prompt in prompts:
            if len(chosen) < limit:
                chosen.setdefault(prompt, source)
    counts = {source: sum(1 for s in chosen.values() if s == source) for source in sources}
    return GatheredPrompts(list(chosen), counts)


@dataclass(frozen=True)
class TransferGate:
    """The student against the teacher on held-out prompts, and the policy's bounds."""

    result: TransferResult
    policy: TransferPolicy

    @property
    def failures(self) -> list[str]:
        figures, policy = self.result.transferred, self.policy
        failures = []
        if figures.mean_kl > policy.max_kl:
            failures.append(
                f"held-out KL {figures.mean_kl:.3g} nats/token is above max_kl {policy.max_kl:g}"
            )
        if figures.agreement < policy.min_agreement:
            failures.append(
                f"next-token agreement {figures.agreement:.3g} is below "
                f"min_agreement {policy.min_agreement:g}"
            )
        if self.kl_reduction < policy.min_kl_reduction:
            failures.append(
                f"the student removed {self.kl_reduction:.3g} of the untrained "
                f"new base's KL ({self.result.untrained.mean_kl:.3g}), below "
                f"min_kl_reduction {policy.min_kl_reduction:g}"
            )
        return failures

    def check_decidable(self) -> None:
        """Refuses (no version) when the held-out continuations are too few to decide on."""
        positions = self.result.transferred.positions
        if positions < self.policy.min_held_out_positions:
            raise Refused(
                f"undecided: the {self.result.held_out_prompts} held-out prompts "
                f"gave {positions} continuation positions, and the gate decides on "
                "at least transfer.min_held_out_positions "
                f"{self.policy.min_held_out_positions}. Add golden_prompts, or "
                "raise transfer.continuation_tokens"
            )

    @property
    def kl_reduction(self) -> float:
        """The share of the new base's own KL from the teacher that the student removed."""
        untrained = self.result.untrained.mean_kl
        return 1 - self.result.transferred.mean_kl / untrained if untrained > 0 else 1.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        figures, untrained = self.result.transferred, self.result.untrained
        return (
            f"held-out KL {figures.mean_kl:.3g} (bound {self.policy.max_kl:g}; the new "
            f"base untrained {untrained.mean_kl:.3g}), agreement {figures.agreement:.3g} "
            f"(threshold {self.policy.min_agreement:g}; untrained "
            f"{untrained.agreement:.3g}) on {self.result.held_out_prompts} held-out prompts"
        )

    @property
    def metrics(self) -> dict[str, float]:
        result = self.result
        return {
            "transfer_kl": result.transferred.mean_kl,
            "transfer_agreement": result.transferred.agreement,
            "transfer_untrained_kl": result.untrained.mean_kl,
            "transfer_untrained_agreement": result.untrained.agreement,
            "transfer_kl_reduction": self.kl_reduction,
            "transfer_positions": float(result.transferred.positions),
            "transfer_prompts": float(result.train_prompts + result.held_out_prompts),
            "transfer_held_out": float(result.held_out_prompts),
            "transfer_steps": float(result.steps),
            "transfer_seconds": result.seconds,
            "transfer_max_kl": self.policy.max_kl,
            "transfer_min_agreement": self.policy.min_agreement,
            "transfer_min_kl_reduction": self.policy.min_kl_reduction,
        }


def settings_for(policy: TrainingPolicy, transfer: TransferPolicy, rank: int) -> TransferSettings:
    return TransferSettings(
        temperature=transfer.temperature,
        continuation_tokens=transfer.continuation_tokens,
        samples_per_prompt=transfer.samples_per_prompt,
        epochs=transfer.epochs,
        min_steps=transfer.min_steps,
        learning_rate=transfer.learning_rate,
        batch_size=transfer.batch_size,
        rank=rank,
        seed=policy.seed,
        held_out_fraction=transfer.held_out_fraction,
    )


def known_targets(
    targets: Mapping[str, str], *, digest_cache: Path | None = None
) -> dict[str, KnownBase]:
    """Each named model's identity, read once at start-up (a missing directory stops the
    trainer here, not in a job)."""
    known = {}
    for name, model in targets.items():
        directory = local_model_dir(model)
        known[name] = KnownBase(
            name,
            directory,
            BaseModelInfo.load(directory, aliases=[name, model], digest_cache=digest_cache),
        )
    return known


class TransferRunner:
    def __init__(
        self,
        registry: Registry,
        base_model: Path,
        targets: Mapping[str, KnownBase],
        *,
        worker: str,
        lease_s: float,
        stopping: threading.Event | None = None,
    ) -> None:
        self.registry, self.transfers = registry, registry.transfers
        self.worker, self.lease_s, self.targets = worker, lease_s, dict(targets)
        self.stopping = stopping or threading.Event()  # set: the job stops at its next step
        own = registry.adapters.base
        same = [t.name for t in self.targets.values() if t.info.fingerprint == own]
        if same:
            raise ValueError(
                f"transfer target {', '.join(same)} is this trainer's own base "
                "model; name only other bases as targets"
            )
        # Where each base this trainer knows lives, by fingerprint: a teacher's base is one.
        self.bases = {own: Path(base_model)} | {
            t.info.fingerprint: t.directory for t in self.targets.values()
        }
        self._views: dict[str, Registry] = {}

    @property
    def actor(self) -> str:
        return f"trainer:{self.worker}"

    def run_once(self) -> bool:
        """Run the oldest due transfer job; False when there was none (or this trainer knows
        no targets, so it leaves the jobs to trainers that do)."""
        if not self.targets or self.stopping.is_set():
            return False
        claim = self.transfers.claim(worker=self.worker, lease_s=self.lease_s)
        if claim is None:
            return False
        self.run(claim)
        return True

    def run(self, claim: TransferClaim) -> None:
        logger.info(
            "transfer job %d: %s@%d to base '%s' (attempt %d)",
            claim.job_id,
            claim.adapter_id,
            claim.from_version,
            claim.to_base,
            claim.attempt,
        )
        try:
            with LeaseKeeper(
                self.transfers,
                claim.job_id,
                worker=self.worker,
                lease_s=self.lease_s,
                what="transfer job",
                stopping=self.stopping,
            ) as lease:
                self._carry(claim, lease)
        except LeaseLost:
            logger.error(
                "transfer job %d lost its lease; another trainer starts it again", claim.job_id
            )
        except Stopped:  # as if killed: the lease lapses, and a trainer starts it again
            logger.info("transfer job %d stopped: the trainer is stopping", claim.job_id)
        except Refused as refusal:
            self._finish(claim, "failed", f"refused: {refusal}")
        except Exception as exc:
            logger.exception("transfer job %d failed", claim.job_id)
            self._finish(claim, "failed", f"{type(exc).__name__}: {exc}")

    def _finish(
        self,
        claim: TransferClaim,
        status: TransferStatus,
        reason: str,
        gate: TransferGate | None = None,
        target: KnownBase | None = None,
    ) -> None:
        logger.info("transfer job %d: %s (%s)", claim.job_id, status, reason)
        try:
            self.transfers.finish(
                claim.job_id,
                status,
                worker=self.worker,
                reason=reason,
                metrics=gate.metrics if gate else None,
                to_base_fingerprint=target.info.fingerprint if target else None,
            )
        except LeaseLost:
            logger.error("transfer job %d lost its lease before it ended", claim.job_id)

    def _target(self, name: str) -> KnownBase:
        if name not in self.targets:
            raise Refused(
                f"this trainer knows no base named '{name}' (it knows: "
                f"{', '.join(sorted(self.targets))}); name one of those, or add "
                f"{name}=MODEL to the trainers' LORALOOP_TRANSFER_TARGETS"
            )
        return self.targets[name]

    def _view(self, target: KnownBase) -> Registry:
        """The registry as processes of the target base see it: registration validates
        against that base, and promote moves that base's pointer."""
        if target.name not in self._views:
            policy = replace(self.registry.adapters.registration_policy, base=target.info)
            self._views[target.name] = registry_on(self.registry.db, self.registry.store, policy)
        return self._views[target.name]

    def _teacher(self, claim: TransferClaim, target: KnownBase) -> tuple[VersionRecord, Path]:
        teacher = self.registry.adapters.version(claim.adapter_id, claim.from_version)
        if teacher.base_fingerprint == target.info.fingerprint:
            raise Refused(f"version {teacher.number} is already a version for base '{target.name}'")
        if teacher.base_fingerprint not in self.bases:
            raise Refused(
                f"version {teacher.number} was made for a base model this trainer "
                f"does not have (fingerprint {teacher.base_fingerprint[:12]}...); "
                "run the transfer on a trainer of that base"
            )
        base = self.bases[teacher.base_fingerprint]
        try:
            check_same_tokenizer(base, target.directory)
        except TokenizerMismatch as mismatch:
            raise Refused(str(mismatch)) from None
        return teacher, base

    def _carry(self, claim: TransferClaim, lease: LeaseKeeper) -> None:
        target = self._target(claim.to_base)
        teacher, teacher_base = self._teacher(claim, target)
        policy = self.registry.adapters.policy(claim.adapter_id)
        transfer = policy.transfer or TransferPolicy()
        gathered = gather_prompts(
            self.registry.feedback, claim.adapter_id, policy, transfer.max_prompts
        )
        if len(gathered.prompts) < transfer.min_prompts:
            raise Refused(
                f"{len(gathered.prompts)} distinct prompts ({gathered.lineage()}); "
                f"the policy's transfer.min_prompts is {transfer.min_prompts}. Add "
                "golden_prompts to the policy, or record completions"
            )
        held = held_out_count(len(gathered.prompts), transfer.held_out_fraction)
        if held < transfer.min_held_out_prompts:
            raise Refused(
                f"undecided: {len(gathered.prompts)} prompts keep {held} out of "
                "training for the gate, and it decides on at least "
                f"transfer.min_held_out_prompts {transfer.min_held_out_prompts}. Add "
                "golden_prompts to the policy, or raise transfer.held_out_fraction"
            )
        view = self._view(target)
        # Compare-and-swap: what was live on the new base when the job decided to run.
        expected_live = view.adapters.get(claim.adapter_id).live_version or NO_LIVE_VERSION
        with scratch_dir(self.registry.store.staging, self.worker) as scratch:
            student = Path(scratch) / "student"
            result = distill(
                teacher_base,
                self.registry.adapters.path_of(teacher),
                target.directory,
                gathered.prompts,
                settings_for(policy, transfer, teacher.rank),
                student,
                progress=lambda step: _report(claim, lease, step),
            )
            gate = TransferGate(result, transfer)
            gate.check_decidable()
            version, _ = self._register(claim, view, teacher, target, student, gate, gathered)
        self._decide(claim, view, version, gate, target, expected_live)

    def _register(
        self,
        claim: TransferClaim,
        view: Registry,
        teacher: VersionRecord,
        target: KnownBase,
        student: Path,
        gate: TransferGate,
        gathered: GatheredPrompts,
    ) -> tuple[VersionRecord, bool]:
        """The student as a version for the new base; the job names it in the same
        transaction, which a lost lease rolls back. False: these exact weights were
        registered already (a job started again distills the same bytes)."""
        tags = {
            "teacher_version": str(teacher.number),
            "teacher_base": teacher.base_fingerprint,
            "student_base": target.info.fingerprint,
            "to_base": target.name,
            "transfer_job": str(claim.job_id),
            "prompts": gathered.lineage(),
            "temperature": f"{gate.policy.temperature:g}",
            "epochs": str(gate.policy.epochs),
            "learning_rate": f"{gate.policy.learning_rate:g}",
        }
        new = NewVersion(
            source="transfer",
            parent_version=teacher.number,
            metrics=gate.metrics,
            tags=tags,
            reason=f"transfer job {claim.job_id}: version {teacher.number} "
            f"distilled to base '{target.name}'",
        )

        def attach(session, version: VersionRecord) -> None:
            self.transfers.attach(claim.job_id, version.number, worker=self.worker, session=session)

        files = {name: student / name for name in ADAPTER_FILES}
        return view.adapters.register(claim.adapter_id, files, new, actor=self.actor, within=attach)

    def _decide(
        self,
        claim: TransferClaim,
        view: Registry,
        version: VersionRecord,
        gate: TransferGate,
        target: KnownBase,
        expected_live: int,
    ) -> None:
        where = f"version {version.number} for base '{target.name}'"
        if not gate.passed:
            why = f"transfer gate failed: {'; '.join(gate.failures)}"
            if version.status != "rejected":
                try:
                    view.adapters.reject(
                        claim.adapter_id, version.number, actor=self.actor, reason=why
                    )
                except Conflict as exc:  # live already: an operator promoted these weights
                    why += f" ({where} not rejected: {exc.message})"
            self._finish(claim, "rejected", f"{why}; {where} rejected", gate, target)
            return
        outcome = f"gate passed: {gate.summary()}; {where}"
        if gate.policy.make_live:
            try:
                view.adapters.promote(
                    claim.adapter_id,
                    version.number,
                    actor=self.actor,
                    expected_live=expected_live,
                    reason=outcome,
                )
                outcome += " is live there"
            except Conflict as exc:  # an operator changed that base's pointer meanwhile
                outcome += f" not made live: {exc.message}"
        else:
            outcome += " registered; the policy's transfer.make_live is off"
        self._finish(claim, "passed", outcome, gate, target)


def _report(claim: TransferClaim, lease: LeaseKeeper, progress: dict) -> None:
    """A step's progress for the lease keeper; a job whose lease was lost stops here, at
    the next step, rather than distilling on for nothing."""
    if lease.lost.is_set():
        raise LeaseLost(f"Transfer job {claim.job_id} is no longer held by {lease.worker}.")
    lease.report(progress)
