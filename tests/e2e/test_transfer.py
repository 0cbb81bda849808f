"""Upgrading the base model end to end: one data directory (SQLite) shared by a server of the
demo base (the old one), a server of the successor base (the new one: the demo tokenizer,
another shape, other weights) and a trainer that knows the successor by name. The operator's
`loraloop base migrate` carries the marker adapter over; each server routes only the versions
of its own base, and the new server's version answers as the old one's does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from loraloop.adapters.prompts import StoredPrompt
from loraloop.serve.cli.client import AdminClient
from loraloop.serve.cli.demo import MARKER, preference_feedback, user_messages

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME, ENGINE_ARGS, start_server
from ..support import wait_until
from .test_training_loop import stop

ADAPTER = "upgrade/marker"
NEW_BASE = "successor"
FEEDBACK, UNSEEN = 48, 12
# Shorter teacher continuations than the defaults: a transfer of seconds on two cores.
QUICK_TRANSFER = {"continuation_tokens": 16, "samples_per_prompt": 3, "epochs": 8}
MIGRATE_TIMEOUT_S = 240


def chat(message: str) -> StoredPrompt:
    return StoredPrompt.chat([("user", message)])


def start_trainer(model: Path, data_dir: Path, log: Path, targets: str) -> subprocess.Popen:
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
    ]
    env = {**os.environ, "LORALOOP_TRANSFER_TARGETS": targets}
    with open(log, "wb") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


@pytest.fixture(scope="module")
def fleet(demo_model, successor_model, marker_teacher, tmp_path_factory):
    """(old server, new server, trainer) on one data directory; the adapter's version 1 (the
    teacher) live on the old base, its feedback stored."""
    data, logs = tmp_path_factory.mktemp("upgrade-data"), tmp_path_factory.mktemp("logs")
    new_engine = [NEW_BASE if arg == BASE_MODEL_NAME else arg for arg in ENGINE_ARGS]
    old = start_server(["--model", str(demo_model), *ENGINE_ARGS], logs / "old.log", data)
    new = start_server(["--model", str(successor_model), *new_engine], logs / "new.log", data)
    trainer = None
    try:
        teacher = marker_teacher
        old.wait_ready()
        new.wait_ready()
        trainer = start_trainer(
            demo_model, data, logs / "trainer.log", f"{NEW_BASE}={successor_model}"
        )
        with AdminClient(old.url, ADMIN_KEY, actor="upgrade-test") as admin:
            admin.create_tenant("upgrade")
            key = admin.issue_key("upgrade")["key"]
            admin.create_adapter(ADAPTER)
            admin.register(ADAPTER, teacher)
            admin.promote(ADAPTER, 1, expected_live=0)
            admin.set_policy(ADAPTER, {"enabled": False, "transfer": QUICK_TRANSFER})
        lines = preference_feedback(ADAPTER, user_messages(FEEDBACK, seed=7))
        stored = httpx.post(
            f"{old.url}/v1/feedback/batch",
            timeout=60,
            content="\n".join(json.dumps(line) for line in lines),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert stored.status_code == 200 and stored.json()["failed"] == 0, stored.text
        yield old, new, trainer
    finally:
        if trainer is not None:
            stop(trainer)
        new.stop()
        old.stop()


def cli(server, group: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORALOOP_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.serve.cli",
            group,
            "--url",
            server.url,
            *args,
            "--poll-s",
            "1",
            "--timeout-s",
            str(MIGRATE_TIMEOUT_S),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT_S + 30,
    )


def migrate(server) -> subprocess.CompletedProcess:
    return cli(server, "base", "migrate", "--to", NEW_BASE)


def first_tokens(server, model: str, messages: list[str]) -> list[str]:
    """The greedy first token of each answer, as text."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0)
    return [
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": message}],
            max_tokens=1,
            temperature=0,
        )
        .choices[0]
        .message.content
        for message in messages
    ]


def share_equal(ours: list, theirs: list) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


def test_base_migrate_carries_the_adapter_and_each_server_routes_its_own(fleet):
    old, new, trainer = fleet
    started = time.monotonic()
    done = migrate(old)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 adapters to carry to base 'successor': 1 queued now" in done.stderr
    assert f"{ADAPTER}@1: running on " in done.stderr and f"{ADAPTER}@1: passed" in done.stderr
    row = next(line for line in done.stdout.splitlines() if ADAPTER in line)
    assert row.split()[:4] == [ADAPTER, "1", NEW_BASE, "2"] and "passed" in row, done.stdout
    migrated_s = time.monotonic() - started

    with AdminClient(old.url, ADMIN_KEY) as admin:
        job = admin.transfers(ADAPTER)[0]
        version = admin.show_version(ADAPTER, 2)
        assert admin.show_adapter(ADAPTER)["live_version"] == 1  # the old base keeps its own
    with AdminClient(new.url, ADMIN_KEY) as admin:
        assert admin.show_adapter(ADAPTER)["live_version"] == 2
    assert (job["status"], job["result_version"], job["attempts"]) == ("passed", 2, 1)
    assert (version["source"], version["parent_version"], version["status"]) == (
        "transfer",
        1,
        "live",
    )
    assert version["tags"]["prompts"] == f"golden 0, sampling 0, recorded 0, feedback {FEEDBACK}"
    metrics = version["metrics"]
    assert metrics["transfer_kl"] <= metrics["transfer_max_kl"]
    print(
        f"\nmigrated in {migrated_s:.0f}s: agreement {metrics['transfer_agreement']:.3f} "
        f"(untrained {metrics['transfer_untrained_agreement']:.3f}), KL "
        f"{metrics['transfer_kl']:.3f} (untrained {metrics['transfer_untrained_kl']:.3f}), "
        f"distilled in {metrics['transfer_seconds']:.0f}s"
    )

    # The new server notices the registry change within a poll, then answers with it.
    unseen = user_messages(FEEDBACK + UNSEEN, seed=7)[FEEDBACK:]
    client = openai.OpenAI(base_url=f"{new.url}/v1", api_key=ADMIN_KEY, max_retries=0)
    wait_until(
        lambda: (
            client.chat.completions.create(
                model=ADAPTER,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=1,
            ).model
            == f"{ADAPTER}@2"
        ),
        10,
        "the new server to route version 2",
    )
    taught = first_tokens(old, ADAPTER, unseen)
    assert share_equal(taught, [MARKER] * UNSEEN) >= 0.75, taught  # the habit itself
    carried = first_tokens(new, ADAPTER, unseen)
    untouched = first_tokens(new, NEW_BASE, unseen)
    assert share_equal(carried, taught) >= 0.75, (carried, taught)
    assert share_equal(untouched, taught) <= 0.25, (untouched, taught)

    # A server routes only versions made for its own base model.
    for server, model in ((old, f"{ADAPTER}@2"), (new, f"{ADAPTER}@1")):
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(
                base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0
            ).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )

    # Run again: what passed stays as it is, nothing is queued or redone.
    again = migrate(old)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 queued now" not in again.stderr and "0 queued now, 1 found" in again.stderr
    with AdminClient(old.url, ADMIN_KEY) as admin:
        assert [j["id"] for j in admin.transfers(ADAPTER)] == [job["id"]]
        assert [v["version"] for v in admin.list_versions(ADAPTER)] == [1, 2]
    assert trainer.poll() is None


def test_a_base_no_trainer_knows_fails_with_the_names_it_knows(fleet):
    old, _, _ = fleet
    refused = httpx.post(
        f"{old.url}/admin/v1/adapters/{ADAPTER}/transfers",
        json={"to_base": "/models/next"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert refused.status_code == 400, refused.text  # a name, never a path
    assert "to_base" in refused.json()["error"]["message"]
    done = cli(old, "adapters", "transfer", ADAPTER, "--to-base", "nowhere", "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "queued transfer job" in done.stderr and "nowhere" in done.stdout
    with AdminClient(old.url, ADMIN_KEY) as admin:
        job = admin.transfers(ADAPTER)[0]
    assert (job["to_base"], job["status"], job["result_version"]) == ("nowhere", "failed", None)
    assert job["reason"] == (
        "refused: this trainer knows no base named 'nowhere' (it knows: successor); name one "
        "of those, or add nowhere=MODEL to the trainers' LORALOOP_TRANSFER_TARGETS"
    )


def test_a_tenant_sees_its_jobs_status_but_not_the_fleets_bases(fleet):
    old, _, _ = fleet
    with AdminClient(old.url, ADMIN_KEY) as admin:
        key = admin.issue_key("upgrade")["key"]
        jobs = admin.transfers(ADAPTER)
        versions = admin.list_versions(ADAPTER)
    with httpx.Client(base_url=old.url, timeout=30) as console:
        console.post("/console/session", json={"key": key}).raise_for_status()
        seen = console.get(f"/admin/v1/adapters/{ADAPTER}/transfers").json()
        seen_versions = console.get(f"/admin/v1/adapters/{ADAPTER}/versions").json()
    assert [(j["id"], j["status"]) for j in seen] == [(j["id"], j["status"]) for j in jobs]
    generic = {
        "passed": "carried to the new base model",
        "failed": "the transfer could not be done; an operator can see why",
    }
    assert all(j["reason"] == generic.get(j["status"]) for j in seen)
    assert all(j["to_base_fingerprint"] is None and j["worker"] is None for j in seen)
    fingerprints = {v["base_fingerprint"] for v in versions} - {
        v["base_fingerprint"] for v in versions if v["version"] == 1
    }
    assert fingerprints  # the carried version's base, which the tenant must not learn here
    text = json.dumps(seen) + json.dumps(seen_versions)
    assert not any(fingerprint in text for fingerprint in fingerprints)
    assert "LORALOOP_TRANSFER_TARGETS" not in text
