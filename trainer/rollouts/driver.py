"""The rollout driver: judges each rollout's shadow pairs and acts on the analysis.

It runs in every trainer, in a thread of its own (a training run takes minutes; a rollout
step must not wait for it). Each pass takes or keeps the lease of every active rollout no
other driver holds, so exactly one process drives a rollout at a time; a killed driver's
lease lapses and another trainer (or the same one restarted) goes on from the registry.
Every decision is written with its figures: `wait` on the rollout, advance and rollback as
history events.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.leased_jobs import LeaseLost
from loraloop.adapters.registry import Registry
from loraloop.adapters.rollouts.book import PairToJudge, RolloutRecord, Verdict
from loraloop.adapters.schema import utcnow

from ..backoff import Backoff
from ..judges import Judge, judge_for
from .analysis import decide

logger = logging.getLogger(__name__)

JUDGED_PER_PASS = 32  # bounds a pass's time (an LLM judge takes seconds a comparison)


def judge_pair(judge: Judge, pair: PairToJudge) -> tuple[Verdict, str]:
    """The judge's verdict on one shadow pair. Alternate pairs put the candidate first or
    second, so a judge that favours a position favours neither version."""
    if pair.candidate_answer == pair.baseline_answer:
        return "tie", "identical answers"
    candidate_first = pair.id % 2 == 0
    first, second = (
        (pair.candidate_answer, pair.baseline_answer)
        if candidate_first
        else (pair.baseline_answer, pair.candidate_answer)
    )
    comparison = judge.compare(pair.prompt, first, second)
    if comparison.winner is None:
        return ("tie" if comparison.rationale == "tie" else "abstained"), comparison.rationale
    candidate_won = (comparison.winner == 0) == candidate_first
    return ("candidate" if candidate_won else "baseline"), comparison.rationale


class RolloutDriver:
    def __init__(
        self,
        registry: Registry,
        base_model: Path,
        *,
        worker: str,
        lease_s: float,
        judge_keys: tuple[str, ...] = (),
    ) -> None:
        self.rollouts, self.adapters = registry.rollouts, registry.adapters
        self.base_model, self.worker, self.lease_s = base_model, worker, lease_s
        self.judge_keys = judge_keys  # the variables a judge may send as its key
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._rests = Backoff(first_s=lease_s / 3)  # rollouts it could not even pause

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:  # a rules judge counts tokens; the model is not needed
            self._tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        return self._tokenizer

    def run_forever(self, poll_s: float, stopping: threading.Event) -> None:
        while not stopping.wait(poll_s):
            try:
                self.drive_once()
            except RegistryUnavailable as exc:
                logger.warning("rollouts: the registry is unavailable: %s", exc.message)
            except Exception:
                logger.exception("rollouts: a pass failed")

    def drive_once(self) -> list[str]:
        """One pass over the active rollouts; the decisions taken (besides waits). A
        rollout this driver cannot decide on is paused with the reason (see `_halt`); the
        others' decisions go on in the same pass. Only an unavailable registry, which stops
        every rollout alike, ends the pass."""
        taken = []
        for rollout in self.rollouts.unfinished():
            if (
                rollout.status != "active"
                or self._rests.resting(str(rollout.id))
                or (not self.rollouts.acquire(rollout.id, worker=self.worker, lease_s=self.lease_s))
            ):
                continue
            try:
                action = self._drive(rollout)
            except LeaseLost as exc:  # an operator ended it, or the lease went meanwhile
                logger.info("rollout %d of %s: %s", rollout.id, rollout.adapter_id, exc.message)
                continue
            except RegistryUnavailable:
                raise
            except Exception as exc:
                self._halt(rollout, exc)
                continue
            if action != "wait":
                taken.append(f"{rollout.adapter_id}: {action}")
        return taken

    def _halt(self, rollout: RolloutRecord, exc: Exception) -> None:
        """Pause the rollout with the reason: the same error would come back at every pass
        (a judge that does not import, a policy it cannot use) until an operator acts. If
        even the pause fails, the rollout rests in this driver, longer each time."""
        reason = f"paused: the driver could not decide: {type(exc).__name__}: {exc}"
        logger.error("rollout %d of %s %s", rollout.id, rollout.adapter_id, reason, exc_info=exc)
        try:
            self.rollouts.halt(rollout.id, worker=self.worker, reason=reason[:1000])
        except RegistryUnavailable:
            raise
        except Exception:
            rest_s = self._rests.failed(str(rollout.id))
            logger.exception(
                "rollout %d could not be paused; it rests %.0f s here", rollout.id, rest_s
            )

    def _drive(self, rollout: RolloutRecord) -> str:
        self._judge_pending(rollout)
        decision = decide(rollout, self.rollouts.evidence(rollout), utcnow())
        record = decision.record()
        if decision.action == "wait":
            self.rollouts.note_decision(
                rollout.id, worker=self.worker, decision=record, step=rollout.step
            )
        elif decision.action == "advance":
            after = self.rollouts.advance(
                rollout.id,
                worker=self.worker,
                decision=record,
                reason=decision.reason,
                step=rollout.step,
            )
            logger.info(
                "rollout %d of %s: %s -> %s (%s)",
                rollout.id,
                rollout.adapter_id,
                rollout.stage,
                after.stage if after.status != "completed" else "completed",
                decision.reason,
            )
        else:
            self.rollouts.roll_back(
                rollout.id,
                worker=self.worker,
                decision=record,
                reason=decision.reason,
                step=rollout.step,
            )
            logger.warning(
                "rollout %d of %s rolled back at %s: %s",
                rollout.id,
                rollout.adapter_id,
                rollout.stage,
                decision.reason,
            )
        return decision.action

    def _judge_pending(self, rollout: RolloutRecord) -> None:
        pairs = self.rollouts.to_judge(rollout, limit=JUDGED_PER_PASS)
        if not pairs:
            return
        policy = self.adapters.policy(rollout.adapter_id)
        verdicts: dict[int, tuple[Verdict, str]]
        if policy.judge is None:  # the policy changed since the rollout began
            verdicts = {
                pair.id: ("abstained", "the adapter's policy names no judge") for pair in pairs
            }
        else:
            judge = judge_for(policy.judge, self.tokenizer, key_variables=self.judge_keys)
            try:
                verdicts = {pair.id: judge_pair(judge, pair) for pair in pairs}
            finally:
                judge.close()
        self.rollouts.set_verdicts(verdicts)
