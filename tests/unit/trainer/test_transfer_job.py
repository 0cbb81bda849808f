"""Transfer jobs run by the trainer, without a server: a real registry (SQLite) holding a
marker-habit adapter on the demo base, carried to the successor base (the demo tokenizer,
another shape, other weights) and gated there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.db import Database, sqlite_url
from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.names import ADAPTER_FILES
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import Registry, registry_on
from loraloop.adapters.store import WeightStore
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.validation import validate_adapter
from loraloop.adapters.versions import NewVersion, RegistrationPolicy
from loraloop.serve.cli.demo import MARKER, answers, user_messages
from loraloop.trainer.demo_model import DemoModelShape, build_demo_model
from loraloop.trainer.transfers.runner import TransferRunner, known_targets

from ...oracle_tasks import questions

ADAPTER = "acme/support"
# Shorter continuations than the defaults keep each distillation to seconds on two cores.
QUICK = {"continuation_tokens": 16, "samples_per_prompt": 3, "epochs": 8}
GOLDEN, FEEDBACK = 24, 24


def chat(message: str) -> StoredPrompt:
    return StoredPrompt.chat([("user", message)])


@pytest.fixture(scope="module")
def other_vocabulary(tmp_path_factory) -> Path:
    return build_demo_model(
        tmp_path_factory.mktemp("model") / "other",
        shape=DemoModelShape(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            pretrain_steps=0,
        ),
    )


def open_on(db: Database, store: WeightStore, model: Path) -> Registry:
    policy = RegistrationPolicy(
        BaseModelInfo.load(model, aliases=["demo"]), max_rank=64, max_bytes=1 << 30
    )
    return registry_on(db, store, policy)


@pytest.fixture
def registry(demo_model, marker_teacher, tmp_path) -> Registry:
    """Version 1 (the marker teacher) live on the demo base; prompts from the policy and
    feedback."""
    db = Database(sqlite_url(tmp_path))
    db.upgrade()
    registry = open_on(db, WeightStore(tmp_path / "weights"), demo_model)
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    registry.adapters.register(
        ADAPTER, {n: marker_teacher / n for n in ADAPTER_FILES}, NewVersion(), actor="test"
    )
    registry.adapters.promote(ADAPTER, 1, actor="test")
    registry.adapters.set_policy(
        ADAPTER,
        TrainingPolicy.model_validate(
            {"enabled": False, "golden_prompts": questions(GOLDEN, seed=3), "transfer": QUICK}
        ),
        actor="test",
    )
    for message, text in zip(
        user_messages(FEEDBACK, seed=5), answers(FEEDBACK, seed=5), strict=True
    ):
        registry.feedback.submit(
            NewFeedback(
                ADAPTER, 1, "preference", chat(message), chosen=f"{MARKER} {text}", rejected=text
            )
        )
    yield registry
    db.dispose()


def runner(
    registry: Registry,
    demo_model: Path,
    targets: dict[str, Path],
    *,
    worker: str = "w",
    lease_s: float = 30,
) -> TransferRunner:
    known = known_targets({name: str(path) for name, path in targets.items()})
    return TransferRunner(registry, demo_model, known, worker=worker, lease_s=lease_s)


def successor_view(registry: Registry, successor_model: Path) -> Registry:
    return open_on(registry.db, registry.store, successor_model)


def transfer_kinds(registry: Registry) -> list[str]:
    return [
        e.kind
        for e in registry.adapters.history(ADAPTER)
        if e.kind.startswith("transfer") or e.kind in ("register", "promote", "reject")
    ]


def test_a_passed_job_makes_a_live_version_for_the_new_base(registry, demo_model, successor_model):
    job, _ = registry.transfers.queue(ADAPTER, "successor", actor="op")
    assert runner(registry, demo_model, {"successor": successor_model}).run_once()
    done = registry.transfers.job(ADAPTER, job.id)
    assert done.status == "passed", done.reason
    assert done.result_version == 2 and "is live there" in done.reason

    new = successor_view(registry, successor_model)
    version = new.adapters.version(ADAPTER, 2)
    teacher = registry.adapters.version(ADAPTER, 1)
    assert (version.source, version.parent_version, version.status) == ("transfer", 1, "live")
    assert version.base_fingerprint == new.adapters.base != registry.adapters.base
    assert version.tags["teacher_version"] == "1"
    assert (version.tags["teacher_base"], version.tags["student_base"]) == (
        teacher.base_fingerprint,
        new.adapters.base,
    )
    assert (
        version.tags["prompts"] == f"golden {GOLDEN}, sampling 0, recorded 0, feedback {FEEDBACK}"
    )
    metrics = version.metrics
    assert metrics == done.metrics and done.to_base_fingerprint == new.adapters.base
    assert (metrics["transfer_prompts"], metrics["transfer_held_out"]) == (48, 12)
    assert metrics["transfer_kl"] <= 0.5 * metrics["transfer_untrained_kl"]
    assert metrics["transfer_agreement"] >= metrics["transfer_untrained_agreement"] + 0.15
    assert metrics["transfer_seconds"] > 0 and version.rank == teacher.rank
    # Each base keeps its own live version; the new one validates against its base.
    assert (
        registry.adapters.get(ADAPTER).live_version,
        new.adapters.get(ADAPTER).live_version,
    ) == (1, 2)
    stored = registry.store.path_of(version.storage_key)
    validate_adapter(
        {n: stored / n for n in ADAPTER_FILES},
        BaseModelInfo.load(successor_model),
        max_rank=64,
        max_bytes=1 << 30,
    )
    assert transfer_kinds(registry) == [
        "register",
        "promote",
        "transfer_queued",
        "transfer_started",
        "register",
        "promote",
        "transfer_passed",
    ]
    assert not any(registry.store.staging.glob("train-transfer-*"))
    assert not runner(registry, demo_model, {"successor": successor_model}).run_once()


def test_a_failed_gate_registers_the_student_and_rejects_it(registry, demo_model, successor_model):
    registry.adapters.set_policy(
        ADAPTER,
        TrainingPolicy.model_validate(
            {
                "enabled": False,
                "golden_prompts": questions(GOLDEN, seed=3),
                "transfer": {**QUICK, "max_kl": 0.01, "epochs": 1},
            }
        ),
        actor="test",
    )
    job, _ = registry.transfers.queue(ADAPTER, "successor", actor="op")
    runner(registry, demo_model, {"successor": successor_model}).run_once()
    done = registry.transfers.job(ADAPTER, job.id)
    assert done.status == "rejected" and done.result_version == 2
    assert done.reason.startswith("transfer gate failed: held-out KL ")
    assert "is above max_kl 0.01" in done.reason
    new = successor_view(registry, successor_model)
    version = new.adapters.version(ADAPTER, 2)
    assert version.status == "rejected" and version.metrics["transfer_max_kl"] == 0.01
    assert new.adapters.get(ADAPTER).live_version is None
    assert transfer_kinds(registry)[-3:] == ["register", "reject", "transfer_rejected"]


def refused(registry: Registry, job_id: int) -> str:
    done = registry.transfers.job(ADAPTER, job_id)
    assert (done.status, done.result_version) == ("failed", None)
    assert [v.number for v in registry.adapters.versions(ADAPTER)] == [1]  # nothing made
    return done.reason


def test_bases_of_another_tokenizer_are_refused_with_the_reason(
    registry, demo_model, other_vocabulary
):
    job, _ = registry.transfers.queue(ADAPTER, "other", actor="op")
    runner(registry, demo_model, {"other": other_vocabulary}).run_once()
    assert refused(registry, job.id).startswith(
        "refused: the bases do not share a tokenizer: vocabulary "
    )
    assert transfer_kinds(registry)[-1] == "transfer_failed"


def test_an_unknown_target_or_too_few_prompts_are_refused(registry, demo_model, successor_model):
    job, _ = registry.transfers.queue(ADAPTER, "next", actor="op")
    trainer = runner(registry, demo_model, {"successor": successor_model})
    trainer.run_once()
    assert refused(registry, job.id) == (
        "refused: this trainer knows no base named 'next' (it knows: successor); name one of "
        "those, or add next=MODEL to the trainers' LORALOOP_TRANSFER_TARGETS"
    )
    registry.adapters.set_policy(
        ADAPTER,
        TrainingPolicy.model_validate({"enabled": False, "transfer": {"min_prompts": 30}}),
        actor="test",
    )
    job, _ = registry.transfers.queue(ADAPTER, "successor", actor="op")
    trainer.run_once()
    assert refused(registry, job.id) == (
        "refused: 24 distinct prompts (golden 0, sampling 0, recorded 0, feedback 24); the "
        "policy's transfer.min_prompts is 30. Add golden_prompts to the policy, or record "
        "completions"
    )


def carried_under(registry: Registry, trainer: TransferRunner, transfer: dict) -> str:
    """The reason of a job run under this transfer policy, which must have been refused."""
    registry.adapters.set_policy(
        ADAPTER,
        TrainingPolicy.model_validate({"enabled": False, "transfer": {**QUICK, **transfer}}),
        actor="test",
    )
    job, _ = registry.transfers.queue(ADAPTER, "successor", actor="op")
    trainer.run_once()
    return refused(registry, job.id)


def test_the_gate_refuses_to_decide_on_too_few_held_out_prompts_or_positions(
    registry, demo_model, successor_model
):
    trainer = runner(registry, demo_model, {"successor": successor_model})
    assert carried_under(registry, trainer, {"min_prompts": 2, "max_prompts": 2}) == (
        "refused: undecided: 2 prompts keep 1 out of training for the gate, and it decides on "
        "at least transfer.min_held_out_prompts 2. Add golden_prompts to the policy, or raise "
        "transfer.held_out_fraction"
    )
    few_positions = {"min_prompts": 8, "max_prompts": 8, "min_held_out_positions": 100_000}
    assert carried_under(registry, trainer, few_positions).startswith(
        "refused: undecided: the 2 held-out prompts gave "
    )


def test_a_trainer_without_targets_leaves_the_jobs_alone(registry, demo_model):
    job, _ = registry.transfers.queue(ADAPTER, "successor", actor="op")
    assert not runner(registry, demo_model, {}).run_once()
    assert registry.transfers.job(ADAPTER, job.id).status == "queued"


def test_a_job_whose_lease_lapsed_mid_run_is_run_again_and_leaves_one_version(
    registry, demo_model, successor_model
):
    job, _ = registry.transfers.queue(ADAPTER, "successor", actor="op")
    targets = {"successor": successor_model}
    stalled = runner(registry, demo_model, targets, worker="stalled", lease_s=0.2)
    claim = registry.transfers.claim(worker="stalled", lease_s=0.2)  # then it stops renewing
    time.sleep(0.3)
    assert runner(registry, demo_model, targets, worker="next").run_once()
    done = registry.transfers.job(ADAPTER, job.id)
    assert (done.status, done.attempts, done.worker) == ("passed", 2, "next")
    stalled.run(claim)  # wakes up: its renewals fail, and it registers nothing
    assert [v.number for v in registry.adapters.versions(ADAPTER)] == [1, 2]
    assert registry.transfers.job(ADAPTER, job.id) == done
    assert transfer_kinds(registry)[2:] == [
        "transfer_queued",
        "transfer_started",
        "transfer_started",
        "register",
        "promote",
        "transfer_passed",
    ]
