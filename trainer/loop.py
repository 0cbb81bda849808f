"""The trainer's loop: polls the registry for work and hands each due run to the runner.

A run starts only when the adapter's pending feedback makes enough pairs (trainer/pending.py
says which rows count), or when a run was queued (by an operator, or by a policy that samples
on a schedule). The run itself is training_run.py's. An adapter whose policy, judge or run
fails rests (backoff.py), and the other adapters' work goes on. When no training is due, the
trainer runs a transfer job, if it has one (trainer/transfers/runner.py).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.registry import Registry
from loraloop.adapters.schema import utcnow
from loraloop.adapters.training import PendingWork

from .backoff import Backoff
from .device import CPU_FLOAT32, Placement
from .pending import MIN_PAIRS_EVER, is_due, might_be_due, too_few_pairs, triage
from .sampling import ServerSampler
from .training_run import NotSampled, TrainingRunner
from .transfers.runner import TransferRunner

logger = logging.getLogger(__name__)

# How often the trainer looks for policies that sample on a schedule: their periods are a
# minute or more, and the look reads every adapter's policy.
SCHEDULE_EVERY_S = 30


class TrainerLoop:
    """The trainer process's work: training runs first, transfer jobs when none is due."""

    def __init__(
        self,
        registry: Registry,
        base_model: Path,
        *,
        worker: str,
        lease_s: float,
        sampler: ServerSampler | None = None,
        transfers: TransferRunner | None = None,
        judge_keys: tuple[str, ...] = (),
        poll_s: float = 2.0,
        stopping: threading.Event | None = None,
        placement: Placement = CPU_FLOAT32,
    ) -> None:
        self.training, self.worker, self.poll_s = registry.training, worker, poll_s
        self.transfers = transfers  # transfer jobs, run when no training is due
        # Once set: no new run starts, and the one under way stops at its next step.
        self.stopping = stopping or threading.Event()
        self._rests = Backoff(poll_s)  # adapters whose last look or run failed
        self._next_schedule = 0.0  # monotonic time of the next look for scheduled runs
        self.runs = TrainingRunner(
            registry,
            base_model,
            worker=worker,
            lease_s=lease_s,
            rests=self._rests,
            stopping=self.stopping,
            sampler=sampler,
            judge_keys=judge_keys,
            placement=placement,
        )

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
        logger.error(
            "%s: %s; its training rests %.1f s", work.adapter_id, reason, rest_s, exc_info=exc
        )
        if work.queued:
            self._refuse(work, reason)

    def _refuse(self, work: PendingWork, reason: str) -> None:
        self.training.refuse_queued(
            work.adapter_id, reason=f"not started: {reason}", actor=f"trainer:{self.worker}"
        )

    def _look_at(self, work: PendingWork) -> bool:
        """Mark the adapter's rows past pairing, then run if it is due; True when it ran."""
        policy = work.policy  # a policy stored before a rule it breaks raises here
        if not (policy.enabled or work.queued):
            return False
        # A run that samples uses one judge for its samples and its gate: the judge's
        # budget (calls, seconds) is the run's.
        judge = self.runs.judge(policy) if work.queued and policy.sampling is not None else None
        sampled = None
        try:
            if judge is not None:
                try:
                    sampled = self.runs.sample(work.adapter_id, policy, judge)
                except NotSampled as refusal:
                    self._refuse(work, str(refusal))
                    return False
            now = utcnow()
            if not work.queued and not might_be_due(work.pending, work.oldest, policy, now):
                return False
            found = triage(self.training.claimable(work.adapter_id), policy, now)
            if found.unpaired:
                marked = self.training.mark_unpaired(work.adapter_id, found.unpaired)
                logger.info(
                    "%s: %d feedback rows will never make a pair: unpaired", work.adapter_id, marked
                )
            if work.queued and len(found.pairs) < MIN_PAIRS_EVER:
                self._refuse(work, too_few_pairs(found))
                return False
            if work.queued or is_due(found, policy, now):
                self.runs.run(work.adapter_id, policy, judge, sampled)
                return True
            return False
        finally:
            if judge is not None:
                judge.close()
