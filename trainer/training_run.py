"""One training run: an adapter's pending feedback turned into a gated new version.

The loop (loop.py) decides when a run is due; this module runs it. One run: claim the
adapter's pending feedback (under a lease, renewed while training), set aside the rows that
make no pair, build DPO pairs, train from the live version, evaluate the candidate against
it, register it with its lineage and metrics (the feedback becomes consumed in that same
transaction), then promote it if the gate passed and the policy allows (or, when the policy
has a rollout plan, start its rollout), or reject it with the failing checks as the reason.
Killed at any point, it leaves no version half-made and no feedback lost. A run that samples
first stores the judged answers of the live version as feedback (before the claim, so that
the run trains on them).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

import httpx

from loraloop.adapters.errors import Conflict
from loraloop.adapters.feedback import Submission
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.names import ADAPTER_FILES, MAX_TAG_CHARS
from loraloop.adapters.registry import Registry
from loraloop.adapters.rollout_policy import RolloutPolicy
from loraloop.adapters.schema import utcnow
from loraloop.adapters.training import Claim
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.versions import NO_LIVE_VERSION, NewVersion, VersionRecord

from .backoff import Backoff
from .device import CPU_FLOAT32, Placement
from .dpo import train_dpo
from .evaluate import Scorer
from .gate import GateReport, evaluate_candidate, golden_prompts
from .judges import Judge, judge_for
from .lease import LeaseKeeper, Stopped
from .pending import MIN_PAIRS_EVER, too_few_pairs, triage
from .round_data import replay_rows, round_data
from .sampling import SamplingRound, ServerSampler, judged_feedback, prompts_to_sample
from .scratch import scratch_dir
from .search import SearchOutcome, search_dpo
from .shared_base import SharedBase

logger = logging.getLogger(__name__)

# A failed run's adapter waits at least this long before another run: a failure that repeats
# (a broken model directory, too little memory) must not start a new run at every poll.
RETRY_AFTER_S = 60


class TrainingRunner:
    """Runs one adapter's training at a time, for the loop that found it due. `rests` is the
    loop's: a run that fails rests its adapter, one that finishes ends the rest."""

    def __init__(
        self,
        registry: Registry,
        base_model: Path,
        *,
        worker: str,
        lease_s: float,
        rests: Backoff,
        stopping: threading.Event,
        sampler: ServerSampler | None = None,
        judge_keys: tuple[str, ...] = (),
        placement: Placement = CPU_FLOAT32,
    ) -> None:
        self.adapters, self.training, self.store = (
            registry.adapters,
            registry.training,
            registry.store,
        )
        self.feedback, self.rollouts = registry.feedback, registry.rollouts
        self.base_model, self.worker, self.lease_s = base_model, worker, lease_s
        self.judge_keys = judge_keys  # the variables a judge may send as its key
        self.sampler = sampler  # on-policy sampling: a server to ask, when one is set
        self.rests = rests
        self.placement = placement  # where the base model is loaded, and in which dtype
        self.stopping = stopping  # set: the run under way stops at its next step
        self._scorer: Scorer | None = None
        self._samplings: dict[str, int] = {}  # adapter -> on-policy samplings so far
        self.store.staging.mkdir(parents=True, exist_ok=True)

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:  # loads the base model: only once there is work
            self._scorer = Scorer(SharedBase(self.base_model, self.placement))
        return self._scorer

    def sample(self, adapter_id: str, policy: TrainingPolicy, judge: Judge) -> SamplingRound:
        """Store the judged answers of the live version as score feedback, so that the run
        about to start trains on them; NotSampled with the reason when it cannot."""
        if self.sampler is None:
            raise NotSampled("the policy samples, but the trainer has no server_url to sample from")
        live = self.adapters.get(adapter_id).live_version
        if live is None:
            raise NotSampled("the policy samples the live version, and there is none")
        sampling = policy.sampling
        if sampling is None:
            raise NotSampled("the policy does not sample")
        recorded = (
            self.feedback.recorded_prompts(adapter_id, sampling.max_prompts)
            if sampling.recorded
            else []
        )
        prompts = prompts_to_sample(sampling, recorded)
        if not prompts:
            raise NotSampled("the policy samples, but has no prompts and none are recorded")
        # Seeded by the policy, the version and the round: a sequence of runs can be
        # repeated, and every round gets samples of its own.
        rounds = self._samplings[adapter_id] = self._samplings.get(adapter_id, 0) + 1
        base_seed = (policy.seed * 1_000_003 + live * 10_007 + rounds * 101) % 2**31
        try:
            sampled = [
                self.sampler.sample(
                    f"{adapter_id}@{live}",
                    prompt,
                    sampling,
                    seed=base_seed + index * sampling.samples,
                )
                for index, prompt in enumerate(prompts)
            ]
        except httpx.HTTPError as exc:
            raise NotSampled(f"sampling from the server failed: {exc}") from exc
        feedback = judged_feedback(adapter_id, live, sampled, judge)
        self.feedback.submit_many([Submission(item) for item in feedback])
        answers = sum(len(s.answers) for s in sampled)
        logger.info(
            "%s@%d: %d answers to %d prompts sampled, %d judged by %s (%d abstained)",
            adapter_id,
            live,
            answers,
            len(prompts),
            len(feedback),
            judge.name,
            sum(judge.tally.abstained.values()),
        )
        return SamplingRound(tuple(prompts), sampling.samples, answers, len(feedback))

    def judge(self, policy: TrainingPolicy) -> Judge | None:
        # Built per run: a policy may change between runs, and an LLM judge's call budget
        # is per run. A judge that cannot be built fails the run (or refuses the queued one)
        # with the reason.
        return (
            judge_for(policy.judge, self.scorer.tokenizer, key_variables=self.judge_keys)
            if policy.judge
            else None
        )

    def run(
        self,
        adapter_id: str,
        policy: TrainingPolicy,
        judge: Judge | None = None,
        sampled: SamplingRound | None = None,
    ) -> None:
        """`judge`: the one the run has used already (sampling what `sampled` says); else
        the policy's, if any, built before training. A run that fails ends `failed` with
        the reason, its feedback back to pending, and its adapter rests."""
        claim = self.training.claim(adapter_id, worker=self.worker, lease_s=self.lease_s)
        logger.info(
            "run %d: %s, %d feedback rows, from version %s",
            claim.run_id,
            adapter_id,
            len(claim.feedback),
            claim.parent_version,
        )
        own = None
        try:
            # Before training: a judge that cannot be built fails the run at once.
            own = self.judge(policy) if judge is None else None
            with LeaseKeeper(
                self.training,
                claim.run_id,
                worker=self.worker,
                lease_s=self.lease_s,
                stopping=self.stopping,
            ) as lease:
                self._train_and_decide(claim, policy, lease, judge or own, sampled)
        except LeaseLost:
            logger.error("run %d lost its lease; another run owns its feedback now", claim.run_id)
        except Stopped:
            logger.info("run %d stopped: the trainer is stopping", claim.run_id)
            self.training.finish(
                claim.run_id,
                "failed",
                release=True,
                reason="stopped: the trainer was stopped mid-run; the "
                "feedback went back to pending",
            )
        except Exception as exc:
            rest_s = self.rests.failed(adapter_id, at_least_s=RETRY_AFTER_S)
            logger.exception("run %d failed; %s rests %.1f s", claim.run_id, adapter_id, rest_s)
            self.training.finish(
                claim.run_id,
                "failed",
                reason=f"{type(exc).__name__}: {exc}",
                metrics=self.placement.labels(),
                release=True,
            )
        finally:
            if own is not None:
                own.close()

    def _train_and_decide(
        self,
        claim: Claim,
        policy: TrainingPolicy,
        lease: LeaseKeeper,
        judge: Judge | None,
        sampled: SamplingRound | None,
    ) -> None:
        found = triage(claim.feedback, policy, utcnow())
        self.training.set_aside(
            claim.run_id, worker=self.worker, unpaired=found.unpaired, waiting=found.waiting
        )
        pairs = found.pairs
        if len(pairs) < MIN_PAIRS_EVER:  # only when another trainer took rows since the poll
            self.rests.failed(claim.adapter_id, at_least_s=RETRY_AFTER_S)
            self.training.finish(claim.run_id, "failed", release=True, reason=too_few_pairs(found))
            return
        earlier = self.training.consumed(claim.adapter_id, limit=replay_rows(policy))
        data = round_data(found, claim.feedback, earlier, policy)
        train, held_out = data.train, data.held_out
        live = self._version_dir(claim.adapter_id, claim.parent_version)
        with scratch_dir(self.store.staging, self.worker) as scratch:
            candidate = Path(scratch)
            searched = (
                None
                if policy.search is None
                else search_dpo(
                    self.scorer, live, train, policy, candidate, on_progress=lease.report
                )
            )
            result = (
                searched.result
                if searched
                else train_dpo(
                    self.scorer.base, live, train, policy, candidate, on_progress=lease.report
                )
            )
            lease.check()  # stopping, or the lease lost, while it trained: no gate
            drift = golden_prompts(policy) or [pair.prompt for pair in held_out]
            report = evaluate_candidate(
                self.scorer,
                candidate=candidate,
                live=live,
                held_out=held_out,
                drift_prompts=drift,
                train=result,
                policy=policy,
                judge=judge,
            )
            judged_by, judge_metrics = _judge_record(judge, sampled)
            # The run's record and the version's show its data, the judge's work and the
            # search.
            report = replace(
                report,
                metrics=report.metrics
                | data.metrics
                | judge_metrics
                | (searched.metrics if searched else {})
                | result.memory.metrics(),
            )
            version, created = self._register(
                claim, candidate, report, len(pairs), policy, searched, judged_by
            )
        if created:
            self._decide(claim, version, report, policy)
        else:
            self._finish_identical(claim, version, report)

    def _version_dir(self, adapter_id: str, number: int | None) -> Path | None:
        if number is None:
            return None
        return self.adapters.path_of(self.adapters.version(adapter_id, number))

    def _register(
        self,
        claim: Claim,
        candidate: Path,
        report: GateReport,
        pairs: int,
        policy: TrainingPolicy,
        searched: SearchOutcome | None,
        judged_by: dict[str, str | int],
    ) -> tuple[VersionRecord, bool]:
        """The registered version, and False when the registry already held these exact
        weights and returned that version instead of making one."""
        files = {name: candidate / name for name in ADAPTER_FILES}
        # Lineage: the run (whose feedback rows name this version once consumed), the data
        # and the hyperparameters it was trained with (a search's best trial's, with the
        # search's trial table), the judge and what it sampled.
        trained = searched.policy if searched else policy
        lineage = {
            "run": claim.run_id,
            "pairs": pairs,
            "feedback": len(claim.feedback),
            "beta": trained.beta,
            "learning_rate": trained.learning_rate,
            "epochs": trained.epochs,
            "batch_size": trained.batch_size,
            "seed": trained.seed,
            **judged_by,
        }
        tags = {name: str(value) for name, value in lineage.items()}
        new = NewVersion(
            source="trainer",
            parent_version=claim.parent_version,
            metrics=report.metrics,
            tags=tags | (searched.tags if searched else {}),
            reason=f"training run {claim.run_id}",
        )

        # Also when the weights turn out to be an existing version's: training is
        # deterministic, so released rows would train to the same bytes at every poll. That
        # version is what this feedback teaches; the rows are consumed by it.
        def consume(session, version: VersionRecord) -> None:
            self.training.consume(
                claim.run_id, version.number, worker=self.worker, pairs=pairs, session=session
            )

        return self.adapters.register(
            claim.adapter_id, files, new, actor=f"trainer:{self.worker}", within=consume
        )

    def _finish_identical(self, claim: Claim, version: VersionRecord, report: GateReport) -> None:
        # The gate judged the same weights that version has, but it was registered (and
        # perhaps promoted, rolled back or rejected) for its own reasons, by its own run or an
        # operator: nothing this run decides may change it.
        verdict = "passed" if report.passed else f"failed: {report.failures()}"
        self._finish(
            claim,
            "identical",
            report,
            (
                f"identical to version {version.number} ({version.status}); no new version, "
                f"version {version.number} left as it is; gate {verdict}"
            ),
        )

    def _decide(
        self, claim: Claim, version: VersionRecord, report: GateReport, policy: TrainingPolicy
    ) -> None:
        adapter_id, actor = claim.adapter_id, f"trainer:{self.worker}"
        if report.unchanged:
            # Not the gate's rejection: nothing was learned to judge. The version stays in
            # the record (its feedback is consumed by it) but never serves.
            self.adapters.reject(
                adapter_id, version.number, actor=actor, reason=f"unchanged: {report.unchanged}"
            )
            self._finish(claim, "unchanged", report, report.unchanged)
        elif not report.promote:
            why = report.failures() or (
                "held-out accuracy gain over the live version is below the policy's "
                f"promote_margin of {policy.gate.promote_margin}"
            )
            self.adapters.reject(
                adapter_id, version.number, actor=actor, reason=f"gate failed: {why}"
            )
            self._finish(claim, "rejected", report, f"gate failed: {why}")
        elif not policy.auto_promote:
            self._finish(claim, "candidate", report, "gate passed; auto-promote is off")
        elif policy.rollout is not None and claim.parent_version is not None:
            self._roll_out(claim, version, report, policy.rollout)
        else:
            self._promote(claim, version, report)

    def _roll_out(
        self, claim: Claim, version: VersionRecord, report: GateReport, plan: RolloutPolicy
    ) -> None:
        """The version earns live traffic step by step (trainer/rollouts/driver.py drives it)."""
        try:
            rollout = self.rollouts.start(
                claim.adapter_id,
                version.number,
                plan,
                actor=f"trainer:{self.worker}",
                reason=_gate_summary(report),
            )
        except Conflict as exc:  # someone promoted or rolled back while this run trained
            self._finish(claim, "candidate", report, f"not rolled out: {exc.message}")
            return
        self._finish(
            claim,
            "candidate",
            report,
            f"gate passed; rollout {rollout.id} started ({_gate_summary(report)})",
        )

    def _promote(self, claim: Claim, version: VersionRecord, report: GateReport) -> None:
        try:
            self.adapters.promote(
                claim.adapter_id,
                version.number,
                expected_live=claim.parent_version or NO_LIVE_VERSION,
                actor=f"trainer:{self.worker}",
                reason=_gate_summary(report),
            )
        except Conflict as exc:  # someone promoted or rolled back while this run trained
            self._finish(claim, "candidate", report, f"not promoted: {exc.message}")
            return
        self._finish(claim, "promoted", report, _gate_summary(report))

    def _finish(self, claim: Claim, status: str, report: GateReport, reason: str) -> None:
        logger.info("run %d: %s (%s)", claim.run_id, status, reason)
        self.rests.succeeded(claim.adapter_id)
        self.training.finish(
            claim.run_id, status, reason=reason, metrics=report.metrics | self.placement.labels()
        )


class NotSampled(Exception):
    """A queued run that samples cannot: the reason refuses the run."""


def _judge_record(
    judge: Judge | None, sampled: SamplingRound | None
) -> tuple[dict[str, str | int], dict[str, float]]:
    """Tags naming the judge of a run's answers and what it sampled, and metrics counting
    what the judge did (an abstention is never an error, but many of them say something)."""
    if judge is None:
        return {}, {}
    tags: dict[str, str | int] = {"judge": judge.name, **(sampled.lineage() if sampled else {})}
    abstained = judge.tally.abstained
    if abstained:
        tags["judge_abstained"] = "; ".join(
            f"{reason}: {count}" for reason, count in abstained.most_common()
        )[:MAX_TAG_CHARS]
    return tags, {
        "judge_judgements": float(judge.tally.judged),
        "judge_abstentions": float(sum(abstained.values())),
    }


def _gate_summary(report: GateReport) -> str:
    return "gate passed: " + ", ".join(f"{c.name} {c.value:.3g}" for c in report.checks)
