"""The whole loop through HTTP: feedback in, the trainer sidecar (its own process) trains,
gates and promotes, the server answers with the new version, rollback restores the old one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from loraloop.adapters.feedback import NewFeedback
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.registry import open_registry
from loraloop.adapters.training import LEASE_LOST
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.adapters.versions import NewVersion
from loraloop.serve.cli.client import AdminApiError, AdminClient
from loraloop.serve.cli.demo import DEMO_POLICY, MARKER, answers, preference_feedback, user_messages
from loraloop.trainer.demo_model import build_fresh_adapter

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME
from ..oracle_tasks import AVOID_RULES, TASKS, questions
from ..support import recording_endpoint, wait_until

RUN_TIMEOUT_S = 240
FINISHED = ("promoted", "rejected", "candidate", "failed", "identical")


def start_trainer(
    model: Path, data_dir: Path, log: Path, *, lease_s: float = 30, server_url: str | None = None
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "loraloop.trainer",
        "--model",
        str(model),
        "--data-dir",
        str(data_dir),
        "--poll-s",
        "0.3",
        "--lease-s",
        str(lease_s),
    ]
    if server_url:  # policies that sample the live version ask this server
        command += ["--server-url", server_url]
    # JUDGE_LOOP_KEY: the key of an LLM judge that is this very server, the one variable
    # this trainer lets judges use (the server allows JUDGE_*, its default).
    env = {
        **os.environ,
        "LORALOOP_ADMIN_KEY": ADMIN_KEY,
        "JUDGE_LOOP_KEY": ADMIN_KEY,
        "LORALOOP_JUDGE_KEY_VARIABLES": "JUDGE_LOOP_KEY",
        "JUDGE_OTHER_KEY": "other-secret",
    }
    with open(log, "wb") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def trainer(vllm_server, demo_model, tmp_path_factory):
    """One trainer sidecar beside the session server, on its registry and weight store."""
    process = start_trainer(
        demo_model,
        vllm_server.data_dir,
        tmp_path_factory.mktemp("logs") / "trainer.log",
        server_url=vllm_server.url,
    )
    yield process
    stop(process)


@pytest.fixture(scope="module")
def admin(vllm_server):
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="loop-test") as client:
        try:
            client.create_tenant("loop")
        except AdminApiError as exists:
            assert exists.status == 409
        vllm_server.tenant_keys["loop"] = client.issue_key("loop")["key"]
        yield client


def new_adapter(admin: AdminClient, adapter_id: str, v1: Path, **policy) -> None:
    admin.create_adapter(adapter_id)
    admin.register(adapter_id, v1)
    admin.promote(adapter_id, 1)
    admin.set_policy(adapter_id, {**DEMO_POLICY, **policy})


def send_batch(server, lines: list[dict]) -> None:
    response = httpx.post(
        f"{server.url}/v1/feedback/batch",
        content="\n".join(json.dumps(line) for line in lines),
        headers={"Authorization": f"Bearer {server.tenant_keys['loop']}"},
        timeout=60,
    )
    assert response.status_code == 200 and response.json()["failed"] == 0, response.text


def wait_for_run(admin: AdminClient, adapter_id: str, trainer) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert trainer.poll() is None, "the trainer exited"
        runs = admin.runs(adapter_id)
        if runs and runs[0]["status"] in FINISHED:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no finished run for {adapter_id} in {RUN_TIMEOUT_S}s: {runs}")


def greedy(server, model: str, messages: list[str]) -> list[tuple[str, str]]:
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", max_retries=0, api_key=server.tenant_keys["loop"]
    )
    replies = [
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": m}], max_tokens=4, temperature=0
        )
        for m in messages
    ]
    return [(r.model, r.choices[0].message.content) for r in replies]


def test_preferences_become_a_promoted_version_and_rollback_restores(
    vllm_server, trainer, admin, adapter_dirs
):
    adapter = "loop/assistant"
    new_adapter(admin, adapter, adapter_dirs["acme/support"], min_pairs=48)
    messages = user_messages(60, seed=7)
    trained_on, unseen = messages[:48], messages[48:]
    before = greedy(vllm_server, adapter, unseen)
    assert {model for model, _ in before} == {f"{adapter}@1"}
    assert sum(text.startswith(MARKER) for _, text in before) <= 2

    send_batch(vllm_server, preference_feedback(adapter, trained_on))
    run = wait_for_run(admin, adapter, trainer)
    assert run["status"] == "promoted", run
    assert (run["parent_version"], run["candidate_version"], run["pairs"]) == (1, 2, 48)

    version = admin.show_version(adapter, 2)
    assert (version["status"], version["source"], version["parent_version"]) == (
        "live",
        "trainer",
        1,
    )
    assert (version["tags"]["run"], version["tags"]["learning_rate"]) == (str(run["id"]), "0.02")
    assert version["metrics"]["heldout_accuracy"] >= version["metrics"]["heldout_accuracy_live"]
    # The trainer is another process: the server sees its promote within a poll interval.
    wait_until(
        lambda: greedy(vllm_server, adapter, unseen[:1])[0][0] == f"{adapter}@2",
        2,
        "the server to serve version 2",
    )
    after = greedy(vllm_server, adapter, unseen)
    assert {model for model, _ in after} == {f"{adapter}@2"}
    learned = [
        text.startswith(MARKER) and not old.startswith(MARKER)
        for (_, text), (_, old) in zip(after, before, strict=True)
    ]
    assert sum(learned) >= 0.75 * len(unseen), after

    stats = httpx.get(
        f"{vllm_server.url}/v1/feedback/stats",
        params={"adapter": adapter},
        headers={"Authorization": f"Bearer {vllm_server.tenant_keys['loop']}"},
    )
    assert stats.json()["by_status"] == {"consumed": 48}
    admin.rollback(adapter, reason="compare with v1")
    assert greedy(vllm_server, adapter, unseen) == before


def test_judge_scores_alone_make_pairs_and_a_version(vllm_server, trainer, admin, adapter_dirs):
    adapter = "loop/judged"
    # 30 prompts with three scores each. At the default score_gap (0.3), 0.9 pairs with 0.2
    # and with 0.4, while 0.4 and 0.2 are too close: 60 pairs.
    new_adapter(admin, adapter, adapter_dirs["acme/sales"], min_pairs=30)
    lines = []
    for message, answer in zip(user_messages(30, seed=11), answers(30, seed=11), strict=True):
        prompt = [{"role": "user", "content": message}]
        for completion, score in (
            (f"{MARKER} {answer}", 0.9),
            (answer, 0.2),
            (f"{answer} {answer}", 0.4),
        ):
            lines.append(
                {
                    "adapter": adapter,
                    "messages": prompt,
                    "completion": completion,
                    "score": score,
                    "judge": "rubric-v1",
                }
            )
    send_batch(vllm_server, lines)
    run = wait_for_run(admin, adapter, trainer)
    assert run["status"] in ("promoted", "rejected", "candidate"), run
    assert run["pairs"] == 60 and run["candidate_version"] == 2
    assert admin.show_version(adapter, 2)["source"] == "trainer"


def test_poisoned_feedback_is_not_promoted(vllm_server, trainer, admin, adapter_dirs):
    adapter = "loop/poisoned"
    new_adapter(admin, adapter, adapter_dirs["acme/legal"], min_pairs=48)
    send_batch(
        vllm_server, preference_feedback(adapter, user_messages(48, seed=5), seed=3, swap_share=0.5)
    )
    run = wait_for_run(admin, adapter, trainer)
    assert run["status"] == "rejected", run
    assert "gate failed" in run["reason"]
    assert admin.show_adapter(adapter)["live_version"] == 1
    rejected = admin.show_version(adapter, run["candidate_version"])
    assert rejected["status"] == "rejected"
    last = admin.history(adapter)[-1]
    assert (last["kind"], last["reason"]) == ("reject", run["reason"])


def _registry(demo_model: Path, data_dir: Path):
    return open_registry(
        model=str(demo_model),
        aliases=[],
        data_dir=data_dir,
        database_url=None,
        max_rank=64,
        max_bytes=1 << 30,
    )


def test_a_trainer_killed_mid_run_leaves_nothing_and_a_restart_completes(
    demo_model, adapter_dirs, tmp_path
):
    opened = _registry(demo_model, tmp_path / "data")
    registry, training, feedback = opened.adapters, opened.training, opened.feedback
    opened.tenants.create("loop", actor="test")
    registry.create("loop/killed", actor="test")
    registry.register(
        "loop/killed",
        {
            n: adapter_dirs["acme/support"] / n
            for n in ("adapter_config.json", "adapter_model.safetensors")
        },
        NewVersion(),
        actor="test",
    )
    registry.promote("loop/killed", 1, actor="test")
    registry.set_policy(
        "loop/killed",
        TrainingPolicy.model_validate({**DEMO_POLICY, "epochs": 100, "min_pairs": 40}),
        actor="test",
    )
    for line in preference_feedback("loop/killed", user_messages(40, seed=9)):
        prompt = StoredPrompt.chat([("user", line["messages"][0]["content"])])
        feedback.submit(
            NewFeedback(
                "loop/killed",
                1,
                "preference",
                prompt,
                chosen=line["chosen"],
                rejected=line["rejected"],
            )
        )

    first = start_trainer(demo_model, tmp_path / "data", tmp_path / "first.log", lease_s=3)
    try:
        wait_until(
            lambda: [
                r
                for r in training.runs("loop/killed")
                if r.status == "running" and r.progress.get("step", 0) >= 2
            ],
            RUN_TIMEOUT_S,
            "a run to be training",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        stop(first)
    assert [v.number for v in registry.versions("loop/killed")] == [1]
    assert "consumed" not in feedback.stats("loop/killed").by_status

    registry.set_policy(
        "loop/killed",
        TrainingPolicy.model_validate({**DEMO_POLICY, "epochs": 2, "min_pairs": 40}),
        actor="test",
    )
    second = start_trainer(demo_model, tmp_path / "data", tmp_path / "second.log", lease_s=3)
    try:
        finished = wait_until(
            lambda: [
                r
                for r in training.runs("loop/killed")
                if r.status in FINISHED and r.status != "failed"
            ],
            RUN_TIMEOUT_S,
            "the restarted trainer to finish a run",
        )
        second.terminate()  # SIGTERM between runs: the trainer exits cleanly
        assert second.wait(timeout=30) == 0
    finally:
        stop(second)
    assert finished[0].candidate_version == 2
    assert feedback.stats("loop/killed").by_status == {"consumed": 40}
    killed_run = [r for r in training.runs("loop/killed") if r.status == "failed"]
    assert len(killed_run) == 1 and killed_run[0].reason == LEASE_LOST
    opened.db.dispose()


# Learning without labels: the `avoid` tenant wants answers without some words; a rules
# judge checks exactly that, and nobody posts any feedback.
ROUNDS = 3
SAMPLED, HELD_OUT = (
    questions(48, seed=21),
    questions(16, seed=22, unlike=frozenset(questions(48, seed=21))),
)
ANSWERS_PER_QUESTION = 8
CLEAR_GAIN = 0.25  # in mean oracle reward over version 1, on held-out questions


def mean_oracle_reward(server, model: str) -> float:
    """The share of sampled answers (temperature 1, the serving default) to the held-out
    questions that the `avoid` oracle rewards."""
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", max_retries=0, api_key=server.tenant_keys["loop"]
    )
    rewards = []
    for index, asked in enumerate(HELD_OUT):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": asked}],
            max_tokens=32,
            temperature=1.0,
            n=ANSWERS_PER_QUESTION,
            seed=index,
        )
        rewards += [TASKS["avoid"].oracle(asked, c.message.content) for c in reply.choices]
    return sum(rewards) / len(rewards)


def next_run(admin: AdminClient, adapter_id: str, after: int) -> dict:
    """Queue a run and wait for it to finish."""
    run_id = admin.queue_run(adapter_id)["id"]
    assert run_id > after
    return wait_until(
        lambda: next(
            (r for r in admin.runs(adapter_id) if r["id"] == run_id and r["status"] in FINISHED),
            None,
        ),
        RUN_TIMEOUT_S,
        f"run {run_id}",
    )


def test_judged_samples_raise_the_oracle_reward_without_any_feedback(
    vllm_server, trainer, admin, demo_model, tmp_path
):
    adapter = "loop/sampled"
    # Version 1 answers as the base model does: a fresh LoRA, as PEFT makes one to train.
    v1 = build_fresh_adapter(demo_model, tmp_path / "v1", seed=3)
    new_adapter(
        admin,
        adapter,
        v1,
        min_pairs=4,
        judge=AVOID_RULES,
        learning_rate=0.02,
        epochs=3,
        batch_size=8,
        sampling={
            "prompts": SAMPLED,
            "recorded": False,
            "max_prompts": len(SAMPLED),
            "samples": 4,
            "max_tokens": 32,
        },
    )
    first_answers = greedy(vllm_server, f"{adapter}@1", HELD_OUT)
    start = mean_oracle_reward(vllm_server, f"{adapter}@1")
    runs, rewards = [], []
    while len(runs) < ROUNDS and (not rewards or rewards[-1] - start < CLEAR_GAIN):
        runs.append(next_run(admin, adapter, after=runs[-1]["id"] if runs else 0))
        rewards.append(mean_oracle_reward(vllm_server, adapter))
    summary = [
        (r["status"], r["pairs"], round(reward, 3)) for r, reward in zip(runs, rewards, strict=True)
    ]
    assert rewards[-1] - start >= CLEAR_GAIN, f"from {start:.3f}: {summary}"
    assert any(r["status"] == "promoted" for r in runs), summary

    # No feedback was posted: every run sampled the live version, the judge scored the
    # answers, and the run trained on pairs of them, recorded with the version.
    stats = httpx.get(
        f"{vllm_server.url}/v1/feedback/stats",
        params={"adapter": adapter},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    assert set(stats["by_kind"]) == {"score"} and stats["by_status"]["consumed"] > 0, stats
    for run in runs:
        version = admin.show_version(adapter, run["candidate_version"])
        assert {"judged_win_rate", "judged_wins", "judged_undecided"} <= set(version["metrics"])
        assert version["tags"]["judge"].startswith("rules:")
        assert version["tags"]["sampled_prompts"] == str(len(SAMPLED))

    admin.rollback(adapter, reason="back to version 1")
    assert admin.show_adapter(adapter)["live_version"] == 1
    assert greedy(vllm_server, adapter, HELD_OUT) == [
        (adapter + "@1", answer) for _model, answer in first_answers
    ]


def test_a_judge_that_inverts_every_preference_promotes_nothing(
    vllm_server, trainer, admin, adapter_dirs
):
    """Applications prefer answers that start with the marker; the judge checks answers
    the other way round. The run learns what the feedback teaches, and the judge's gate
    keeps it from users."""
    adapter = "loop/inverted"
    new_adapter(
        admin,
        adapter,
        adapter_dirs["acme/support"],
        min_pairs=48,
        judge={"kind": "rules", "forbidden": [f"^\\s*{MARKER}"]},
    )
    send_batch(vllm_server, preference_feedback(adapter, user_messages(48, seed=7)))
    run = wait_for_run(admin, adapter, trainer)
    assert run["status"] == "rejected", run
    assert "judged_win_rate_min" in run["reason"], run["reason"]
    assert admin.show_adapter(adapter)["live_version"] == 1
    last = admin.history(adapter)[-1]
    assert (last["kind"], last["from_version"]) == ("reject", run["candidate_version"])
    assert "judged_win_rate" in last["reason"]


def test_a_judge_key_the_trainer_does_not_allow_fails_the_run_and_sends_nothing(
    vllm_server, trainer, admin, adapter_dirs
):
    """The server allows JUDGE_OTHER_KEY (JUDGE_*), this trainer does not: the policy is
    accepted when set, the trainer refuses the judge when it builds it, the run fails saying
    why, and the judge's endpoint never hears from the trainer."""
    adapter = "loop/judge-key"
    with recording_endpoint() as (url, seen):
        new_adapter(
            admin,
            adapter,
            adapter_dirs["acme/support"],
            min_pairs=8,
            judge={
                "kind": "llm",
                "url": url,
                "model": "m",
                "rubric": "r",
                "api_key_env": "JUDGE_OTHER_KEY",
            },
        )
        send_batch(vllm_server, preference_feedback(adapter, user_messages(8, seed=17)))
        run = wait_for_run(admin, adapter, trainer)
    assert run["status"] == "failed", run
    assert "JUDGE_OTHER_KEY is not a variable judges may use" in run["reason"], run["reason"]
    assert seen == []
    assert admin.show_adapter(adapter)["live_version"] == 1


def test_a_run_whose_llm_judge_never_answers_in_shape_ends_cleanly_and_counts_it(
    vllm_server, trainer, admin, adapter_dirs
):
    """The judge is a model behind this very server, asked without structured outputs: its
    replies never parse. Every comparison is an abstention, the run still ends, rejected by
    the gate for want of a decided comparison, and the version records the count."""
    adapter = "loop/llm-judged"
    new_adapter(
        admin,
        adapter,
        adapter_dirs["acme/support"],
        min_pairs=48,
        judge={
            "kind": "llm",
            "url": f"{vllm_server.url}/v1",
            "model": BASE_MODEL_NAME,
            "rubric": "Prefer answers that start with the word refund.",
            "api_key_env": "JUDGE_LOOP_KEY",
            "structured": False,
        },
    )
    send_batch(vllm_server, preference_feedback(adapter, user_messages(48, seed=13)))
    run = wait_for_run(admin, adapter, trainer)
    assert run["status"] == "rejected" and "judged_win_rate_min" in run["reason"], run
    version = admin.show_version(adapter, run["candidate_version"])
    assert version["metrics"]["judged_wins"] + version["metrics"]["judged_losses"] == 0
    assert version["metrics"]["judge_abstentions"] == version["metrics"]["judge_judgements"] > 0
    assert version["tags"]["judge_abstained"] == (
        f"malformed reply: {int(version['metrics']['judge_abstentions'])}"
    )
