"""Rollouts: a new version earning its traffic step by step (shadow, canary steps, live, a
watch window), its evidence, and the lease of the one process that drives it.

The state lives here, not in any process: a restarted server or a second replica routes by
the same step, and whichever driver holds the lease goes on deciding. Each change of step is
one transaction with its history row (rollout_advance, rollout_rollback, ...) carrying the
figures it was decided on. A driver's change checks, inside its transaction, that the
rollout is still active and still its own, so an operator's promote or rollback (which ends
the rollout, see pointers.end_unfinished_rollout) always wins and nothing is promoted twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import Database, rows_changed
from ..errors import Conflict, NotFound
from ..feedback import AdapterIds
from ..history import log_event
from ..leased_jobs import ROLLOUTS, LeaseLost, lease_until, release_lease, still_held
from ..pointers import (
    UNFINISHED_ROLLOUT,
    beside_live,
    clear_canary,
    close_rollout,
    end_unfinished_rollout,
    live_version,
    make_live,
    pointer_row,
    unfinished_rollout,
)
from ..prompts import StoredPrompt
from ..rollout_policy import RolloutPolicy
from ..schema import (
    Adapter,
    EventKind,
    Feedback,
    Rollout,
    RolloutCount,
    RolloutStatus,
    ShadowComparison,
    Tenant,
    adapter_row,
    adapter_row_id_to_name,
    utc,
    utcnow,
    version_row,
)
from ..training_policy import TrainingPolicy
from .shadow_texts import HAS_TEXTS, NO_TEXTS, forget_texts, pairs_keeping_texts

Verdict = Literal["candidate", "baseline", "tie", "abstained"]


@dataclass(frozen=True)
class RolloutRecord:
    id: int
    adapter_id: str
    candidate: int
    baseline: int
    status: RolloutStatus
    step: int  # index into plan.steps; len(plan.steps): the watch window
    step_started_at: datetime
    plan: RolloutPolicy
    decision: Mapping[str, object]  # the last evaluation: action, cause, figures, at
    driver: str | None
    lease_expires_at: datetime | None
    reason: str | None
    created_at: datetime
    created_by: str
    finished_at: datetime | None
    base: str = ""  # the fingerprint of the base model both versions are for

    @classmethod
    def of(cls, row: Rollout, adapter_id: str) -> RolloutRecord:
        def maybe_utc(moment: datetime | None) -> datetime | None:
            return utc(moment) if moment else None

        return cls(
            row.id,
            adapter_id,
            row.candidate_version,
            row.baseline_version,
            row.status,
            row.step,
            utc(row.step_started_at),
            RolloutPolicy.model_validate(row.plan),
            dict(row.decision),
            row.driver,
            maybe_utc(row.lease_expires_at),
            row.reason,
            utc(row.created_at),
            row.created_by,
            maybe_utc(row.finished_at),
            row.base_fingerprint,
        )

    @property
    def watching(self) -> bool:
        return self.step >= len(self.plan.steps)

    @property
    def stage(self) -> str:
        """shadow, canary 10%, watch: what the step is, in words."""
        return self.plan.stages[self.step]

    @property
    def canary_percent(self) -> int:
        return 0 if self.watching else self.plan.steps[self.step].percent


@dataclass(frozen=True)
class ShadowPair:
    """A live prompt both versions answered, as a server hands it in."""

    rollout_id: int
    step: int
    served_version: int
    prompt: StoredPrompt
    candidate_answer: str
    baseline_answer: str


@dataclass(frozen=True)
class PairToJudge:
    id: int
    prompt: StoredPrompt
    candidate_answer: str
    baseline_answer: str


@dataclass(frozen=True)
class StepEvidence:
    """What the registry holds about one step of a rollout."""

    verdicts: Mapping[str, int]  # candidate / baseline / tie / abstained -> count
    unjudged: int
    counts: Mapping[int, Mapping[str, int]]  # version -> counter name -> value
    scores: Mapping[int, tuple[float, ...]]  # version -> application scores since `since`


CountKey = tuple[int, int, int, str]  # rollout id, step, version, counter name


def _upsert_count(connection: Connection, values: dict) -> postgresql.Insert | sqlite.Insert:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(RolloutCount).values(**values)
    return statement.on_conflict_do_update(
        index_elements=["rollout_id", "step", "version", "name"],
        set_={"value": RolloutCount.__table__.c.value + statement.excluded.value},
    )


class RolloutBook:
    """Rollouts as one base model's processes see them: an operator's status, pause, resume
    and abort are of the rollout on this base; drivers and servers' evidence name theirs."""

    def __init__(self, db: Database, base: str) -> None:
        self.db, self.base = db, base
        self.adapter_ids = AdapterIds()

    # -- reading -------------------------------------------------------------------------

    def current(self, adapter_id: str) -> RolloutRecord:
        """The adapter's unfinished rollout, else its latest one."""
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            row = unfinished_rollout(adapter, self.base, session=session) or session.scalar(
                select(Rollout)
                .where(Rollout.adapter_id == adapter.id, Rollout.base_fingerprint == self.base)
                .order_by(Rollout.id.desc())
                .limit(1)
            )
            if row is None:
                raise NotFound(f"'{adapter_id}' has had no rollout.")
            return RolloutRecord.of(row, adapter_id)

    def unfinished(self) -> list[RolloutRecord]:
        """Every active or paused rollout: what servers route by and drivers look at."""
        with self.db.reading() as session:
            rows = session.execute(
                select(Rollout, Tenant.name, Adapter.name)
                .join(Adapter, Rollout.adapter_id == Adapter.id)
                .join(Tenant, Adapter.tenant_id == Tenant.id)
                .where(Rollout.status.in_(UNFINISHED_ROLLOUT))
                .order_by(Rollout.id)
            ).all()
            return [RolloutRecord.of(row, f"{tenant}/{name}") for row, tenant, name in rows]

    def evidence(self, rollout: RolloutRecord) -> StepEvidence:
        step = rollout.step
        with self.db.reading() as session:
            verdicts: dict[str, int] = defaultdict(int)
            unjudged = 0
            for (verdict,) in session.execute(
                select(ShadowComparison.verdict).where(
                    ShadowComparison.rollout_id == rollout.id, ShadowComparison.step == step
                )
            ):
                if verdict is None:
                    unjudged += 1
                else:
                    verdicts[verdict] += 1
            counts: dict[int, dict[str, int]] = defaultdict(dict)
            for version, name, value in session.execute(
                select(RolloutCount.version, RolloutCount.name, RolloutCount.value).where(
                    RolloutCount.rollout_id == rollout.id, RolloutCount.step == step
                )
            ):
                counts[version][name] = value
            scores = self._scores(rollout, session=session)
        return StepEvidence(dict(verdicts), unjudged, dict(counts), scores)

    def _scores(self, rollout: RolloutRecord, *, session: Session) -> dict[int, tuple[float, ...]]:
        """Scores applications posted for either version's completions: during the step; in
        the watch, the previous version's from its last window (the rollout until then)."""
        adapter = adapter_row(rollout.adapter_id, session=session)
        since = rollout.created_at if rollout.watching else rollout.step_started_at
        found: dict[int, list[float]] = defaultdict(list)
        for version, score, at in session.execute(
            select(Feedback.version, Feedback.score, Feedback.created_at).where(
                Feedback.adapter_id == adapter.id,
                Feedback.kind == "score",
                # Applications' scores, whoever they name as judge; not the trainer
                # judge's scores of the answers it sampled to train on.
                Feedback.source == "application",
                Feedback.version.in_((rollout.candidate, rollout.baseline)),
                Feedback.created_at >= since,
            )
        ):
            if version is None or score is None:  # never: the query asks for one of two
                continue  # versions, and score feedback has its score
            # The previous version's window ended where the watch began.
            if not (
                rollout.watching
                and version == rollout.baseline
                and utc(at) >= rollout.step_started_at
            ):
                found[version].append(score)
        return {version: tuple(values) for version, values in found.items()}

    def to_judge(self, rollout: RolloutRecord, *, limit: int) -> list[PairToJudge]:
        with self.db.reading() as session:
            rows = session.scalars(
                select(ShadowComparison)
                .where(
                    ShadowComparison.rollout_id == rollout.id,
                    ShadowComparison.step == rollout.step,
                    ShadowComparison.verdict.is_(None),
                    HAS_TEXTS,
                )  # past the retention period unjudged: nothing left to judge
                .order_by(ShadowComparison.id)
                .limit(limit)
            )
            # The texts are kept, and dropped, together (HAS_TEXTS tests one of them).
            return [
                PairToJudge(
                    row.id,
                    StoredPrompt.from_json(row.prompt),
                    row.candidate_answer,
                    row.baseline_answer,
                )
                for row in rows
                if row.prompt is not None
                and row.candidate_answer is not None
                and row.baseline_answer is not None
            ]

    # -- what servers add ----------------------------------------------------------------

    def add_pairs(self, pairs: Iterable[ShadowPair]) -> None:
        rows = [
            {
                "rollout_id": p.rollout_id,
                "step": p.step,
                "served_version": p.served_version,
                "prompt": p.prompt.to_json(),
                "candidate_answer": p.candidate_answer,
                "baseline_answer": p.baseline_answer,
                "created_at": utcnow(),
            }
            for p in pairs
        ]
        if rows:
            with self.db.writing_rows() as connection:
                connection.execute(ShadowComparison.__table__.insert(), rows)

    def add_counts(self, counts: Mapping[CountKey, int]) -> None:
        with self.db.writing_rows() as connection:
            for (rollout_id, step, version, name), value in counts.items():
                connection.execute(
                    _upsert_count(
                        connection,
                        {
                            "rollout_id": rollout_id,
                            "step": step,
                            "version": version,
                            "name": name,
                            "value": value,
                        },
                    )
                )

    # -- what a driver does --------------------------------------------------------------

    def acquire(self, rollout_id: int, *, worker: str, lease_s: float) -> bool:
        """Take or keep the lease on an active rollout; False: another driver holds it."""
        now = utcnow()
        with self.db.transaction(routing_change=False) as session:
            return (
                rows_changed(
                    session,
                    update(Rollout)
                    .where(
                        Rollout.id == rollout_id,
                        Rollout.status == "active",
                        ROLLOUTS.free_for(worker, now),
                    )
                    .values(driver=worker, lease_expires_at=lease_until(lease_s, now)),
                )
                == 1
            )

    def set_verdicts(self, verdicts: Mapping[int, tuple[Verdict, str]]) -> None:
        """The judge's verdicts; the texts it read go with them unless the adapter's policy
        keeps users' text (see shadow_texts)."""
        with self.db.writing_rows() as connection:
            keeping = pairs_keeping_texts(verdicts, connection=connection)
            for pair_id, (verdict, rationale) in verdicts.items():
                texts = {"rationale": rationale[:500]} if pair_id in keeping else NO_TEXTS
                connection.execute(
                    update(ShadowComparison)
                    .where(ShadowComparison.id == pair_id, ShadowComparison.verdict.is_(None))
                    .values(verdict=verdict, **texts)
                )

    def forget_texts(self, retention_s: float) -> int:
        """Drop the shadow comparisons' texts that may be kept no longer; how many."""
        return forget_texts(self.db, older_than=utcnow() - timedelta(seconds=retention_s))

    def note_decision(
        self, rollout_id: int, *, worker: str, decision: dict, step: int | None = None
    ) -> None:
        """A `wait` decision: kept with the rollout (the latest only), no history row."""
        with self.db.transaction(routing_change=False) as session:
            self._held(rollout_id, worker, step, session=session).decision = decision

    def halt(self, rollout_id: int, *, worker: str, reason: str) -> RolloutRecord:
        """The driver cannot decide (its judge cannot be built, the analysis fails): the
        rollout is paused where it is, the traffic as it is, with the reason on the record
        and in the history, until an operator resumes it."""
        with self.db.transaction() as session:
            rollout = self._held(rollout_id, worker, session=session)
            adapter = session.get_one(Adapter, rollout.adapter_id)
            rollout.status, rollout.reason = "paused", reason
            release_lease(rollout, ROLLOUTS)
            log_event(
                "rollout_paused",
                adapter,
                f"rollout:{worker}",
                session=session,
                to_version=rollout.candidate_version,
                reason=reason,
                rollout=rollout.id,
            )
            return RolloutRecord.of(rollout, adapter_row_id_to_name(adapter.id, session=session))

    def advance(
        self, rollout_id: int, *, worker: str, decision: dict, reason: str, step: int | None = None
    ) -> RolloutRecord:
        """On to the next step: a bigger canary share, live after the last step (a compare-
        and-swap from the version that was live when the rollout began), then the watch;
        from the watch, completed. `step`: the step the decision was made on (a driver
        always names it); refused if the rollout has left it since."""
        with self.db.transaction() as session:
            rollout = self._held(rollout_id, worker, step, session=session)
            adapter = session.get_one(Adapter, rollout.adapter_id)
            adapter_id = adapter_row_id_to_name(adapter.id, session=session)
            plan = RolloutPolicy.model_validate(rollout.plan)
            actor = f"rollout:{worker}"
            rollout.decision = decision
            if rollout.step >= len(plan.steps):
                self._finish(rollout, adapter, "completed", actor, reason, session=session)
                return RolloutRecord.of(rollout, adapter_id)
            following = rollout.step + 1
            pointer = pointer_row(adapter, rollout.base_fingerprint, session=session)
            log_event(
                "rollout_advance",
                adapter,
                actor,
                session=session,
                from_version=rollout.baseline_version,
                to_version=rollout.candidate_version,
                reason=reason,
                decision=decision,
                step=following,
            )
            if following < len(plan.steps):
                percent = plan.steps[following].percent
                pointer.canary_version = rollout.candidate_version if percent else None
                pointer.canary_percent = percent or None
            else:
                if pointer.live_version != rollout.baseline_version:
                    raise LeaseLost(
                        f"the live version of '{adapter_id}' is no longer "
                        f"{rollout.baseline_version}"
                    )
                target = version_row(
                    adapter, adapter_id, rollout.candidate_version, session=session
                )
                make_live(
                    adapter,
                    pointer,
                    adapter_id,
                    target,
                    actor,
                    kind="promote",
                    reason=f"rollout {rollout.id}: {reason}",
                    session=session,
                )
            rollout.step, rollout.step_started_at = following, utcnow()
            if following == len(plan.steps) and plan.watch is None:
                self._finish(
                    rollout,
                    adapter,
                    "completed",
                    actor,
                    "live; the plan has no watch window",
                    session=session,
                )
            return RolloutRecord.of(rollout, adapter_id)

    def roll_back(
        self, rollout_id: int, *, worker: str, decision: dict, reason: str, step: int | None = None
    ) -> RolloutRecord:
        """The candidate loses: its canary share goes, or (in the watch) the previous version
        is live again; either way the candidate is rejected, so it cannot come back by
        accident. `step`: as for `advance`."""
        with self.db.transaction() as session:
            rollout = self._held(rollout_id, worker, step, session=session)
            adapter = session.get_one(Adapter, rollout.adapter_id)
            adapter_id = adapter_row_id_to_name(adapter.id, session=session)
            actor = f"rollout:{worker}"
            candidate = version_row(adapter, adapter_id, rollout.candidate_version, session=session)
            log_event(
                "rollout_rollback",
                adapter,
                actor,
                session=session,
                from_version=rollout.candidate_version,
                to_version=rollout.baseline_version,
                reason=reason,
                decision=decision,
                step=rollout.step,
            )
            pointer = pointer_row(adapter, rollout.base_fingerprint, session=session)
            if pointer.live_version == rollout.candidate_version:
                baseline = version_row(
                    adapter, adapter_id, rollout.baseline_version, session=session
                )
                make_live(
                    adapter,
                    pointer,
                    adapter_id,
                    baseline,
                    actor,
                    kind="rollback",
                    reason=f"rollout {rollout.id}: {reason}",
                    session=session,
                )
            elif pointer.canary_version == rollout.candidate_version:
                clear_canary(
                    adapter, pointer, actor, f"rollout {rollout.id} rolled back", session=session
                )
            candidate.status = "rejected"
            rollout.decision = decision
            self._finish(rollout, adapter, "rolled_back", actor, reason, log=False, session=session)
            return RolloutRecord.of(rollout, adapter_id)

    # -- what an operator does -----------------------------------------------------------

    def start(
        self,
        adapter_id: str,
        version: int,
        plan: RolloutPolicy,
        *,
        actor: str,
        reason: str | None = None,
    ) -> RolloutRecord:
        """Begin a rollout of `version` against the live version; an unfinished rollout of
        the adapter is superseded by it."""
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            target, pointer = beside_live(
                adapter, adapter_id, version, "a rollout", session=session
            )
            end_unfinished_rollout(
                adapter,
                pointer,
                actor,
                f"superseded by a rollout of version {version}",
                session=session,
            )
            now = utcnow()
            rollout = Rollout(
                adapter_id=adapter.id,
                base_fingerprint=target.base_fingerprint,
                candidate_version=version,
                baseline_version=pointer.live_version,
                status="active",
                step=0,
                step_started_at=now,
                plan=plan.model_dump(mode="json"),
                decision={},
                reason=reason,
                created_at=now,
                created_by=actor,
            )
            session.add(rollout)
            first = plan.steps[0].percent
            if first:
                pointer.canary_version, pointer.canary_percent = version, first
            session.flush()
            log_event(
                "rollout_started",
                adapter,
                actor,
                session=session,
                from_version=pointer.live_version,
                to_version=version,
                reason=reason,
                rollout=rollout.id,
                plan=rollout.plan,
            )
            return RolloutRecord.of(rollout, adapter_id)

    def start_planned(
        self, adapter_id: str, version: int, *, actor: str, reason: str | None = None
    ) -> RolloutRecord | None:
        """Start the rollout the adapter's policy plans for a new version; None when it plans
        none, or there is no live version to earn traffic from (the first goes live as
        before)."""
        policy, live = self._policy_and_live(adapter_id, version)
        if policy.rollout is None or live is None or live == version:
            return None
        return self.start(adapter_id, version, policy.rollout, actor=actor, reason=reason)

    def _policy_and_live(self, adapter_id: str, version: int) -> tuple[TrainingPolicy, int | None]:
        """The adapter's policy, and the live version on `version`'s base."""
        with self.db.reading() as session:
            adapter = adapter_row(adapter_id, session=session)
            base = version_row(adapter, adapter_id, version, session=session).base_fingerprint
            return (
                TrainingPolicy.stored(adapter.policy),
                live_version(adapter, base, session=session),
            )

    def pause(self, adapter_id: str, *, actor: str, reason: str | None = None) -> RolloutRecord:
        """No decisions until resumed; the traffic stays as it is."""
        return self._operate(adapter_id, "active", "paused", "rollout_paused", actor, reason)

    def resume(self, adapter_id: str, *, actor: str, reason: str | None = None) -> RolloutRecord:
        """Decisions again; the step's clock starts over (a pause is no evidence)."""
        return self._operate(adapter_id, "paused", "active", "rollout_resumed", actor, reason)

    def abort(self, adapter_id: str, *, actor: str, reason: str | None = None) -> RolloutRecord:
        """Stop it where it is: a canary share goes; a version already live stays live."""
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            rollout = unfinished_rollout(adapter, self.base, session=session, lock=True)
            if rollout is None:
                raise Conflict(f"'{adapter_id}' has no rollout under way.")
            pointer = pointer_row(adapter, self.base, session=session)
            if pointer.canary_version == rollout.candidate_version:
                clear_canary(
                    adapter, pointer, actor, f"rollout {rollout.id} aborted", session=session
                )
            self._finish(rollout, adapter, "aborted", actor, reason, session=session)
            return RolloutRecord.of(rollout, adapter_id)

    def _operate(
        self,
        adapter_id: str,
        from_status: RolloutStatus,
        to_status: RolloutStatus,
        kind: EventKind,
        actor: str,
        reason: str | None,
    ) -> RolloutRecord:
        with self.db.transaction() as session:
            adapter = adapter_row(adapter_id, session=session)
            rollout = unfinished_rollout(adapter, self.base, session=session, lock=True)
            if rollout is None or rollout.status != from_status:
                state = rollout.status if rollout else "not under way"
                raise Conflict(
                    f"The rollout of '{adapter_id}' is {state}; only a "
                    f"{from_status} one can be {to_status}."
                )
            rollout.status = to_status
            if to_status == "active":
                rollout.step_started_at = utcnow()
            release_lease(rollout, ROLLOUTS)
            log_event(
                kind,
                adapter,
                actor,
                session=session,
                to_version=rollout.candidate_version,
                reason=reason,
                rollout=rollout.id,
            )
            return RolloutRecord.of(rollout, adapter_id)

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _held(
        rollout_id: int, worker: str, step: int | None = None, *, session: Session
    ) -> Rollout:
        """The rollout, locked, if `worker` holds it and it is still at `step`: a driver that
        decided on a record read before another driver moved the rollout on (its lease
        lapsed meanwhile, and it took the rollout back) must not act on that decision."""
        rollout = still_held(ROLLOUTS, rollout_id, worker, session=session, lock=True)
        if step is not None and rollout.step != step:
            raise LeaseLost(
                f"rollout {rollout_id} is at step {rollout.step} now, not at "
                f"step {step}, which the decision was made on"
            )
        return rollout

    @staticmethod
    def _finish(
        rollout: Rollout,
        adapter: Adapter,
        status: RolloutStatus,
        actor: str,
        reason: str | None,
        *,
        session: Session,
        log: bool = True,
    ) -> None:
        close_rollout(rollout, status, reason)
        if log:
            kinds: dict[RolloutStatus, EventKind] = {
                "completed": "rollout_completed",
                "aborted": "rollout_aborted",
            }
            log_event(
                kinds[status],
                adapter,
                actor,
                session=session,
                to_version=rollout.candidate_version,
                reason=reason,
                rollout=rollout.id,
            )

    # -- what servers report -------------------------------------------------------------

    def rollbacks_by_cause(self) -> dict[tuple[str, str], int]:
        """(adapter id, the cause its last decision names) -> rolled-back rollouts; the
        cause is "unknown" where the decision names none."""
        found: dict[tuple[str, str], int] = defaultdict(int)
        with self.db.reading() as session:
            for decision, tenant, name in session.execute(
                select(Rollout.decision, Tenant.name, Adapter.name)
                .select_from(Rollout)
                .join(Adapter)
                .join(Tenant)
                .where(Rollout.status == "rolled_back")
            ):
                cause = (decision or {}).get("cause") or "unknown"
                found[(f"{tenant}/{name}", str(cause))] += 1
        return dict(found)
