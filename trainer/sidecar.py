"""The trainer sidecar: turns each adapter's pending feedback into a gated new version.

A run starts only when the adapter's pending feedback makes enough pairs (trainer/pending.py
says which rows count). One run: claim the adapter's pending feedback (under a lease, renewed
while training), set aside the rows that make no pair, build DPO pairs, train from the live
version, evaluate the candidate against it, register it with its lineage and metrics (the
feedback becomes consumed in that same transaction), then promote it if the gate passed and
the policy allows (or, when the policy has a rollout plan, start its rollout), or reject it
with the failing checks as the reason. Killed at any point, it leaves no version half-made
and no feedback lost. When no training is due, the trainer runs a transfer job, if it has
one (trainer/transfer_job.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx

from loraloop.adapters.errors import Conflict, RegistryUnavailable
from loraloop.adapters.feedback import Submission
from loraloop.adapters.names import ADAPTER_FILES, MAX_TAG_CHARS
from loraloop.adapters.policy import TrainingPolicy
from loraloop.adapters.registry import Registry
from loraloop.adapters.schema import utcnow
from loraloop.adapters.training import Claim, LeaseLost, PendingWork
from loraloop.adapters.versions import NO_LIVE_VERSION, NewVersion, VersionRecord

from .backoff import Backoff
from .dpo import train_dpo
from .evaluate import Scorer
from .gate import GateReport, evaluate_candidate, golden_prompts
from .judges import Judge, judge_for
from .lease import LeaseKeeper, Stopped
from .pairs import split_held_out
from .pending import MIN_PAIRS_EVER, Triage, is_due, might_be_due, triage
from .sampling import SamplingRound, ServerSampler, judged_feedback, prompts_to_sample
from .scratch import scratch_dir
from .search import SearchOutcome, search_dpo
from .transfer_job import TransferRunner

logger = logging.getLogger(__name__)

# A failed run's adapter waits at least this long before another run: a failure that repeats
# (a broken model directory, too little memory) must not start a new run at every poll.
RETRY_AFTER_S = 60
# How often the trainer looks for policies that sample on a schedule: their periods are a
# minute or more, and the look reads every adapter's policy.
SCHEDULE_EVERY_S = 30


def _too_few_pairs(found: Triage) -> str:
    return (f"{len(found.pairs)} preference pairs from {found.rows} feedback rows; at least "
            f"{MIN_PAIRS_EVER} are needed")


class Trainer:
    def __init__(self, registry: Registry, base_model: Path, *, worker: str,
                 lease_s: float, sampler: ServerSampler | None = None,
                 transfers: TransferRunner | None = None,
                 judge_keys: tuple[str, ...] = (), poll_s: float = 2.0,
                 stopping: threading.Event | None = None) -> None:
        self.adapters, self.training, self.store = (registry.adapters, registry.training,
                                                    registry.store)
        self.feedback, self.rollouts = registry.feedback, registry.rollouts
        self.base_model, self.worker, self.lease_s = base_model, worker, lease_s
        self.judge_keys = judge_keys  # the variables a judge may send as its key
        self.sampler = sampler  # on-policy sampling: a server to ask, when one is set
        self.transfers = transfers  # transfer jobs, run when no training is due
        self._scorer: Scorer | None = None
        self.poll_s = poll_s
        self.stopping = stopping or threading.Event()  # set: no new run, the one under way
        # stops at its next step
        self._rests = Backoff(poll_s)  # adapters whose last look or run failed
        self._samplings: dict[str, int] = {}  # adapter -> on-policy samplings so far
        self._next_schedule = 0.0  # monotonic time of the next look for scheduled runs
        self.store.staging.mkdir(parents=True, exist_ok=True)

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:  # loads the base model: only once there is work
            self._scorer = Scorer(self.base_model)
        return self._scorer

    def _sample(self, adapter_id: str, policy: TrainingPolicy, judge: Judge) -> SamplingRound:
        """Store the judged answers of the live version as score feedback, so that the run
        about to start trains on them; NotSampled with the reason when it cannot."""
        if self.sampler is None:
            raise NotSampled("the policy samples, but the trainer has no server_url to "
                             "sample from")
        live = self.adapters.get(adapter_id).live_version
        if live is None:
            raise NotSampled("the policy samples the live version, and there is none")
        sampling = policy.sampling
        recorded = (self.feedback.recorded_prompts(adapter_id, sampling.max_prompts)
                    if sampling.recorded else [])
        prompts = prompts_to_sample(sampling, recorded)
        if not prompts:
            raise NotSampled("the policy samples, but has no prompts and none are recorded")
        # Seeded by the policy, the version and the round: a sequence of runs can be
        # repeated, and every round gets samples of its own.
        rounds = self._samplings[adapter_id] = self._samplings.get(adapter_id, 0) + 1
        base_seed = (policy.seed * 1_000_003 + live * 10_007 + rounds * 101) % 2**31
        try:
            sampled = [self.sampler.sample(f"{adapter_id}@{live}", prompt, sampling,
                                           seed=base_seed + index * sampling.samples)
                       for index, prompt in enumerate(prompts)]
        except httpx.HTTPError as exc:
            raise NotSampled(f"sampling from the server failed: {exc}") from exc
        feedback = judged_feedback(adapter_id, live, sampled, judge)
        self.feedback.submit_many([Submission(item) for item in feedback])
        answers = sum(len(s.answers) for s in sampled)
        logger.info("%s@%d: %d answers to %d prompts sampled, %d judged by %s (%d abstained)",
                    adapter_id, live, answers, len(prompts), len(feedback), judge.name,
                    sum(judge.tally.abstained.values()))
        return SamplingRound(tuple(prompts), sampling.samples, answers, len(feedback))

    def _judge(self, policy: TrainingPolicy) -> Judge | None:
        # Built per run: a policy may change between runs, and an LLM judge's call budget
        # is per run. A judge that cannot be built fails the run (or refuses the queued one)
        # with the reason.
        return judge_for(policy.judge, self.scorer.tokenizer,
                         key_variables=self.judge_keys) if policy.judge else None

    def run_forever(self) -> None:
        """Until `stopping` is set: then a run in progress stops at its next step (its
        feedback goes back to pending), and no new one starts. (A run cut short by SIGKILL
        is abandoned instead: its lease lapses.)"""
        logger.info("trainer %s watching for feedback", self.worker)
        while not self.stopping.is_set():
            try:
                ran = self.run_once()
            except RegistryUnavailable as exc:  # keep the sidecar up, try again
                logger.warning("%s; trainer retrying in %.1f s", exc.message, self.poll_s)
                ran = False
            except Exception:
                logger.exception("trainer loop error; retrying in %.1f s", self.poll_s)
                ran = False
            if not ran:
                self.stopping.wait(self.poll_s)
        logger.info("trainer %s stopped", self.worker)

    def run_once(self) -> bool:
        """Run the first due adapter's training, else a transfer job; False when nothing
        was due. An adapter whose policy, judge or run fails rests (longer each time in a
        row) and the next adapter's work goes on in the same pass; only an unavailable
        registry, which stops every adapter alike, ends the pass."""
        if time.monotonic() >= self._next_schedule:
            self._next_schedule = time.monotonic() + SCHEDULE_EVERY_S
            for adapter_id in self.training.queue_scheduled(actor=f"trainer:{self.worker}"):
                logger.info("%s: a run queued, as its policy samples on a schedule", adapter_id)
        for work in self.training.pending_work():
            if self.stopping.is_set():
                return False
            if self._rests.resting(work.adapter_id) and not work.queued:
                continue
            try:
                if self._look_at(work):
                    return True
            except RegistryUnavailable:
                raise
            except Exception as exc:
                self._look_failed(work, exc)
        return self.transfers is not None and self.transfers.run_once()

    def _look_failed(self, work: PendingWork, exc: Exception) -> None:
        """The adapter's policy, judge or feedback raised before a run: its queued run, if
        any, fails with the reason (nothing was claimed), and the adapter rests."""
        reason = f"{type(exc).__name__}: {exc}"
        rest_s = self._rests.failed(work.adapter_id)
        logger.error("%s: %s; its training rests %.1f s", work.adapter_id, reason, rest_s,
                     exc_info=exc)
        if work.queued:
            self.training.refuse_queued(work.adapter_id, reason=f"not started: {reason}",
                                        actor=f"trainer:{self.worker}")

    def _look_at(self, work: PendingWork) -> bool:
        """Mark the adapter's rows past pairing, then run if it is due; True when it ran."""
        policy = work.policy  # a policy stored before a rule it breaks raises here
        if not (policy.enabled or work.queued):
            return False
        # A run that samples uses one judge for its samples and its gate: the judge's
        # budget (calls, seconds) is the run's.
        judge = self._judge(policy) if work.queued and policy.sampling is not None else None
        sampled = None
        try:
            if judge is not None:
                try:
                    sampled = self._sample(work.adapter_id, policy, judge)
                except NotSampled as refusal:
                    self.training.refuse_queued(work.adapter_id,
                                                reason=f"not started: {refusal}",
                                                actor=f"trainer:{self.worker}")
                    return False
            now = utcnow()
            if not work.queued and not might_be_due(work.pending, work.oldest, policy, now):
                return False
            found = triage(self.training.claimable(work.adapter_id), policy, now)
            if found.unpaired:
                marked = self.training.mark_unpaired(work.adapter_id, found.unpaired)
                logger.info("%s: %d feedback rows will never make a pair: unpaired",
                            work.adapter_id, marked)
            if work.queued and len(found.pairs) < MIN_PAIRS_EVER:
                reason = f"not started: {_too_few_pairs(found)}"
                self.training.refuse_queued(work.adapter_id, reason=reason,
                                            actor=f"trainer:{self.worker}")
                return False
            if work.queued or is_due(found, policy, now):
                self.run(work.adapter_id, policy, judge, sampled)
                return True
            return False
        finally:
            if judge is not None:
                judge.close()

    def run(self, adapter_id: str, policy: TrainingPolicy, judge: Judge | None = None,
            sampled: SamplingRound | None = None) -> None:
        """`judge`: the one the run has used already (sampling what `sampled` says); else
        the policy's, if any, built before training. A run that fails ends `failed` with
        the reason, its feedback back to pending, and its adapter rests."""
        claim = self.training.claim(adapter_id, worker=self.worker, lease_s=self.lease_s)
        logger.info("run %d: %s, %d feedback rows, from version %s", claim.run_id, adapter_id,
                    len(claim.feedback), claim.parent_version)
        own = None
        try:
            # Before training: a judge that cannot be built fails the run at once.
            own = self._judge(policy) if judge is None else None
            with LeaseKeeper(self.training, claim.run_id, worker=self.worker,
                             lease_s=self.lease_s, stopping=self.stopping) as lease:
                self._train_and_decide(claim, policy, lease, judge or own, sampled)
        except LeaseLost:
            logger.error("run %d lost its lease; another run owns its feedback now", claim.run_id)
        except Stopped:
            logger.info("run %d stopped: the trainer is stopping", claim.run_id)
            self.training.finish(claim.run_id, "failed", release=True,
                                 reason="stopped: the trainer was stopped mid-run; the "
                                 "feedback went back to pending")
        except Exception as exc:
            rest_s = self._rests.failed(adapter_id, at_least_s=RETRY_AFTER_S)
            logger.exception("run %d failed; %s rests %.1f s", claim.run_id, adapter_id, rest_s)
            self.training.finish(claim.run_id, "failed", reason=f"{type(exc).__name__}: {exc}",
                                 release=True)
        finally:
            if own is not None:
                own.close()

    def _train_and_decide(self, claim: Claim, policy: TrainingPolicy, lease: LeaseKeeper,
                          judge: Judge | None, sampled: SamplingRound | None) -> None:
        found = triage(claim.feedback, policy, utcnow())
        self.training.set_aside(claim.run_id, worker=self.worker, unpaired=found.unpaired,
                                waiting=found.waiting)
        pairs = found.pairs
        if len(pairs) < MIN_PAIRS_EVER:  # only when another trainer took rows since the poll
            self._rests.failed(claim.adapter_id, at_least_s=RETRY_AFTER_S)
            self.training.finish(claim.run_id, "failed", release=True,
                                 reason=_too_few_pairs(found))
            return
        train, held_out = split_held_out(pairs, policy.held_out_fraction, policy.seed)
        live = self._version_dir(claim.adapter_id, claim.parent_version)
        with scratch_dir(self.store.staging, self.worker) as scratch:
            candidate = Path(scratch)
            searched = None if policy.search is None else search_dpo(
                self.scorer, self.base_model, live, train, policy, candidate,
                on_progress=lease.report)
            result = searched.result if searched else train_dpo(
                self.base_model, live, train, policy, candidate, on_progress=lease.report)
            lease.check()  # stopping, or the lease lost, while it trained: no gate
            drift = golden_prompts(policy) or [pair.prompt for pair in held_out]
            report = evaluate_candidate(self.scorer, candidate=candidate, live=live,
                                        held_out=held_out, drift_prompts=drift,
                                        train=result, policy=policy, judge=judge)
            judged_by, judge_metrics = _judge_record(judge, sampled)
            # The run's record and the version's show the judge's work and the search.
            report = replace(report, metrics=report.metrics | judge_metrics | (
                searched.metrics if searched else {}))
            version, created = self._register(claim, candidate, report, len(pairs), policy,
                                              searched, judged_by)
        if created:
            self._decide(claim, version, report, policy)
        else:
            self._finish_identical(claim, version, report)

    def _version_dir(self, adapter_id: str, number: int | None) -> Path | None:
        if number is None:
            return None
        return self.adapters.path_of(self.adapters.version(adapter_id, number))

    def _register(self, claim: Claim, candidate: Path, report: GateReport, pairs: int,
                  policy: TrainingPolicy, searched: SearchOutcome | None,
                  judged_by: dict[str, str | int]) -> tuple[VersionRecord, bool]:
        """The registered version, and False when the registry already held these exact
        weights and returned that version instead of making one."""
        files = {name: candidate / name for name in ADAPTER_FILES}
        # Lineage: the run (whose feedback rows name this version once consumed), the data
        # and the hyperparameters it was trained with (a search's best trial's, with the
        # search's trial table), the judge and what it sampled.
        trained = searched.policy if searched else policy
        lineage = {"run": claim.run_id, "pairs": pairs, "feedback": len(claim.feedback),
                   "beta": trained.beta, "learning_rate": trained.learning_rate,
                   "epochs": trained.epochs, "batch_size": trained.batch_size,
                   "seed": trained.seed, **judged_by}
        tags = {name: str(value) for name, value in lineage.items()}
        new = NewVersion(source="trainer", parent_version=claim.parent_version,
                         metrics=report.metrics, tags=tags | (searched.tags if searched else {}),
                         reason=f"training run {claim.run_id}")

        # Also when the weights turn out to be an existing version's: training is
        # deterministic, so released rows would train to the same bytes at every poll. That
        # version is what this feedback teaches; the rows are consumed by it.
        def consume(session, version: VersionRecord) -> None:
            self.training.consume(claim.run_id, version.number, worker=self.worker, pairs=pairs,
                                  session=session)

        return self.adapters.register(claim.adapter_id, files, new,
                                      actor=f"trainer:{self.worker}", within=consume)

    def _finish_identical(self, claim: Claim, version: VersionRecord,
                          report: GateReport) -> None:
        # The gate judged the same weights that version has, but it was registered (and
        # perhaps promoted, rolled back or rejected) for its own reasons, by its own run or an
        # operator: nothing this run decides may change it.
        verdict = "passed" if report.passed else f"failed: {report.failures()}"
        self._finish(claim, "identical", report, (
            f"identical to version {version.number} ({version.status}); no new version, "
            f"version {version.number} left as it is; gate {verdict}"))

    def _decide(self, claim: Claim, version: VersionRecord, report: GateReport,
                policy: TrainingPolicy) -> None:
        adapter_id, actor = claim.adapter_id, f"trainer:{self.worker}"
        if report.unchanged:
            # Not the gate's rejection: nothing was learned to judge. The version stays in
            # the record (its feedback is consumed by it) but never serves.
            self.adapters.reject(adapter_id, version.number, actor=actor,
                                 reason=f"unchanged: {report.unchanged}")
            self._finish(claim, "unchanged", report, report.unchanged)
        elif not report.promote:
            why = report.failures() or (
                "held-out accuracy gain over the live version is below the policy's "
                f"promote_margin of {policy.gate.promote_margin}")
            self.adapters.reject(adapter_id, version.number, actor=actor,
                                 reason=f"gate failed: {why}")
            self._finish(claim, "rejected", report, f"gate failed: {why}")
        elif not policy.auto_promote:
            self._finish(claim, "candidate", report, "gate passed; auto-promote is off")
        elif policy.rollout is not None and claim.parent_version is not None:
            self._roll_out(claim, version, report, policy)
        else:
            self._promote(claim, version, report)

    def _roll_out(self, claim: Claim, version: VersionRecord, report: GateReport,
                  policy: TrainingPolicy) -> None:
        """The version earns live traffic step by step (trainer/rollout.py drives it)."""
        try:
            rollout = self.rollouts.start(
                claim.adapter_id, version.number, policy.rollout,
                actor=f"trainer:{self.worker}", reason=_gate_summary(report))
        except Conflict as exc:  # someone promoted or rolled back while this run trained
            self._finish(claim, "candidate", report, f"not rolled out: {exc.message}")
            return
        self._finish(claim, "candidate", report,
                     f"gate passed; rollout {rollout.id} started ({_gate_summary(report)})")

    def _promote(self, claim: Claim, version: VersionRecord, report: GateReport) -> None:
        try:
            self.adapters.promote(claim.adapter_id, version.number,
                                  expected_live=claim.parent_version or NO_LIVE_VERSION,
                                  actor=f"trainer:{self.worker}", reason=_gate_summary(report))
        except Conflict as exc:  # someone promoted or rolled back while this run trained
            self._finish(claim, "candidate", report, f"not promoted: {exc.message}")
            return
        self._finish(claim, "promoted", report, _gate_summary(report))

    def _finish(self, claim: Claim, status: str, report: GateReport, reason: str) -> None:
        logger.info("run %d: %s (%s)", claim.run_id, status, reason)
        self._rests.succeeded(claim.adapter_id)
        self.training.finish(claim.run_id, status, reason=reason, metrics=report.metrics)


class NotSampled(Exception):
    """A queued run that samples cannot: the reason refuses the run."""


def _judge_record(judge: Judge | None, sampled: SamplingRound | None
                  ) -> tuple[dict[str, str | int], dict[str, float]]:
    """Tags naming the judge of a run's answers and what it sampled, and metrics counting
    what the judge did (an abstention is never an error, but many of them say something)."""
    if judge is None:
        return {}, {}
    tags: dict[str, str | int] = {"judge": judge.name, **(sampled.lineage() if sampled else {})}
    abstained = judge.tally.abstained
    if abstained:
        tags["judge_abstained"] = "; ".join(
            f"{reason}: {count}" for reason, count in abstained.most_common())[:MAX_TAG_CHARS]
    return tags, {"judge_judgements": float(judge.tally.judged),
                  "judge_abstentions": float(sum(abstained.values()))}


def _gate_summary(report: GateReport) -> str:
    return "gate passed: " + ", ".join(f"{c.name} {c.value:.3g}" for c in report.checks)
