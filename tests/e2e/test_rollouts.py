"""Progressive delivery through the real parts: a server of its own (vLLM), a trainer process
driving rollouts, users' requests through the official client, and a judge whose preference
the test sets in the adapter's policy (a rules judge that wants, or forbids, answers that
start with the marker word; version 2 was trained to start with it, version 1 was not).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from loraloop.serve.cli.client import AdminApiError, AdminClient
from loraloop.serve.cli.demo import MARKER, user_messages

from ..conftest import ADMIN_KEY, ENGINE_ARGS, start_server
from ..support import wait_until
from .test_training_loop import start_trainer, stop

TENANT = "roll"
PREFERS_MARKER = {"kind": "rules", "required": [f"^{MARKER}"]}
FORBIDS_MARKER = {"kind": "rules", "forbidden": [f"^{MARKER}"]}
PLAN = {
    "steps": [
        {"percent": 0, "min_requests": 8, "min_comparisons": 7, "max_seconds": 600},
        {"percent": 10, "min_requests": 80, "min_comparisons": 7, "max_seconds": 600},
        {"percent": 50, "min_requests": 30, "min_comparisons": 7, "max_seconds": 600},
    ],
    "shadow_percent": 100,
    "error_rate": 0.05,
    "watch": {"min_comparisons": 7, "max_seconds": 600},
}
STEP_TIMEOUT_S = 240
DRIVER_TIMEOUT_S = 300
QUESTIONS = user_messages(64, seed=31)


class Fleet:
    """The module's server (restartable) and trainer, on one data directory."""

    def __init__(self, demo_model: Path, data_dir: Path, logs: Path) -> None:
        self.demo_model, self.data_dir, self.logs = demo_model, data_dir, logs
        self.starts = 0
        self.server = self._start_server()
        self.trainer = self._start_trainer()

    def _start_server(self):
        self.starts += 1
        return start_server(
            ["--model", str(self.demo_model), *ENGINE_ARGS],
            self.logs / f"server-{self.starts}.log",
            self.data_dir,
        ).wait_ready()

    def _start_trainer(self):
        os.environ.update(LORALOOP_ROLLOUT_POLL_S="0.5", LORALOOP_ROLLOUT_LEASE_S="4")
        try:
            return start_trainer(
                self.demo_model, self.data_dir, self.logs / f"trainer-{time.monotonic_ns()}.log"
            )
        finally:
            for name in ("LORALOOP_ROLLOUT_POLL_S", "LORALOOP_ROLLOUT_LEASE_S"):
                os.environ.pop(name)

    def kill_server_and_restart(self) -> None:
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait()
        self.server.stop()
        self.server = self._start_server()

    def kill_trainer_and_restart(self) -> None:
        self.trainer.kill()
        self.trainer.wait()
        self.trainer = self._start_trainer()

    def admin(self) -> AdminClient:
        return AdminClient(self.server.url, ADMIN_KEY, actor="rollout-test")

    def users(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=key, max_retries=0)

    def close(self) -> None:
        stop(self.trainer)
        self.server.stop()


@pytest.fixture(scope="module")
def fleet(demo_model, tmp_path_factory):
    fleet = Fleet(
        demo_model, tmp_path_factory.mktemp("rollout-data"), tmp_path_factory.mktemp("rollout-logs")
    )
    with fleet.admin() as admin:
        admin.create_tenant(TENANT)
        fleet.key = admin.issue_key(TENANT)["key"]
    yield fleet
    fleet.close()


def new_adapter(fleet: Fleet, name: str, v1: Path, judge: dict) -> str:
    adapter_id = f"{TENANT}/{name}"
    with fleet.admin() as admin:
        admin.create_adapter(adapter_id)
        admin.register(adapter_id, v1)
        admin.promote(adapter_id, 1)
        admin.set_policy(adapter_id, {"judge": judge, "rollout": PLAN})
    return adapter_id


class Traffic:
    """Users' requests, each noted with the rollout's stage just before and after it."""

    def __init__(self, fleet: Fleet, adapter_id: str) -> None:
        self.fleet, self.adapter_id = fleet, adapter_id
        self.served: list[tuple[str, str, str]] = []  # stage before, model, stage after
        self.stages: list[str] = []
        self.sent = 0

    def rollout(self) -> dict:
        with self.fleet.admin() as admin:
            return admin.rollout(self.adapter_id)

    def _where(self) -> tuple[str, dict]:
        """Where the rollout is (its stage, or how it ended), noted, and the rollout."""
        rollout = self.rollout()
        where = (
            rollout["stage"] if rollout["status"] in ("active", "paused") else (rollout["status"])
        )
        if not self.stages or self.stages[-1] != where:
            self.stages.append(where)
        return where, rollout

    def until(self, done, what: str, timeout_s: float = STEP_TIMEOUT_S) -> dict:
        """Send requests (every one must succeed) until `done(rollout)`."""
        # No traffic before a trainer drives the rollout: a trainer starting up beside a busy
        # engine on two cores can take minutes to get going.
        wait_until(
            lambda: self.rollout()["driver"] or self.rollout()["status"] != "active",
            DRIVER_TIMEOUT_S,
            "a trainer driving the rollout",
        )
        deadline = time.monotonic() + timeout_s
        users = self.fleet.users(self.fleet.key)
        while time.monotonic() < deadline:
            before, rollout = self._where()
            if done(rollout):
                return rollout
            for _ in range(4):
                question = QUESTIONS[self.sent % len(QUESTIONS)]
                self.sent += 1
                response = users.chat.completions.create(
                    model=self.adapter_id,
                    temperature=0,
                    max_tokens=6,
                    messages=[{"role": "user", "content": question}],
                )
                self.served.append((before, response.model, ""))
            after, _ = self._where()
            self.served[-4:] = [(b, m, after) for b, m, _ in self.served[-4:]]
        raise AssertionError(
            f"{what}: not within {timeout_s} s; stages {self.stages}; rollout {self.rollout()}"
        )

    def share_at(self, stage: str, version: int) -> tuple[int, int]:
        """(requests answered by `version`, requests) among those sent wholly in `stage`."""
        models = [m for before, m, after in self.served if before == after == stage]
        return sum(m.endswith(f"@{version}") for m in models), len(models)


def history(fleet: Fleet, adapter_id: str) -> list[dict]:
    with fleet.admin() as admin:
        return admin.history(adapter_id, 200)


def within_binomial_bound(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 3.5 * math.sqrt(n * p * (1 - p)) + 1


def test_a_better_version_earns_its_traffic_then_is_rolled_back_when_it_turns_worse(
    fleet, adapter_dirs, marker_teacher
):
    adapter_id = new_adapter(fleet, "better", adapter_dirs["acme/support"], PREFERS_MARKER)
    with fleet.admin() as admin:
        admin.register(adapter_id, marker_teacher)  # the policy plans its rollout
    traffic = Traffic(fleet, adapter_id)
    live = traffic.until(lambda r: r["stage"] == "watch", "the rollout reaching live")
    assert traffic.stages[:4] == ["shadow", "canary 10%", "canary 50%", "watch"]
    assert traffic.share_at("shadow", 2)[0] == 0  # users never see a shadow answer
    hits, n = traffic.share_at("canary 10%", 2)
    assert n >= 40 and within_binomial_bound(hits, n, 0.10), (hits, n)
    hits, n = traffic.share_at("canary 50%", 2)
    assert within_binomial_bound(hits, n, 0.50), (hits, n)
    with fleet.admin() as admin:
        assert admin.show_adapter(adapter_id)["live_version"] == 2
    advances = [e for e in history(fleet, adapter_id) if e["kind"] == "rollout_advance"]
    assert len(advances) == 3
    for event in advances:  # each decision with its figures
        decision = event["detail"]["decision"]
        assert decision["log_lr_better"] >= decision["threshold"] and decision["losses"] == 0
        assert "significantly better" in event["reason"]
    assert live["decision"]["stage"] == "canary 50%"  # the decision that made it live

    # The users' judge changes its mind: the watch compares version 2's live answers with
    # version 1's and rolls back.
    with fleet.admin() as admin:
        admin.set_policy(adapter_id, {"judge": FORBIDS_MARKER, "rollout": PLAN})
    ended = traffic.until(lambda r: r["status"] == "rolled_back", "the watch rolling back")
    assert ended["decision"]["cause"] == "judge" and ended["decision"]["stage"] == "watch"
    with fleet.admin() as admin:
        assert admin.show_adapter(adapter_id)["live_version"] == 1
        assert admin.show_version(adapter_id, 2)["status"] == "rejected"
    rollback = [e for e in history(fleet, adapter_id) if e["kind"] == "rollout_rollback"][-1]
    assert "significantly worse" in rollback["reason"]
    assert rollback["detail"]["decision"]["losses"] >= 7


def test_a_worse_version_is_rolled_back_before_it_serves_many_users(
    fleet, adapter_dirs, marker_teacher
):
    adapter_id = new_adapter(fleet, "worse", adapter_dirs["acme/support"], FORBIDS_MARKER)
    with fleet.admin() as admin:
        admin.register(adapter_id, marker_teacher)
    traffic = Traffic(fleet, adapter_id)
    ended = traffic.until(lambda r: r["status"] != "active", "the rollback")
    assert ended["status"] == "rolled_back"
    assert ended["decision"]["stage"] in ("shadow", "canary 10%")
    assert ended["decision"]["cause"] == "judge" and ended["decision"]["wins"] == 0
    served = Counter(model for _, model, _ in traffic.served)
    assert served[f"{adapter_id}@2"] <= 0.2 * traffic.sent
    with fleet.admin() as admin:
        assert admin.show_adapter(adapter_id)["live_version"] == 1
    kinds = [e["kind"] for e in history(fleet, adapter_id)]
    assert "rollout_rollback" in kinds[-2:] and "promote" not in kinds[3:]


def test_an_operator_promote_during_a_rollout_ends_it_and_wins(fleet, adapter_dirs, marker_teacher):
    adapter_id = new_adapter(fleet, "operator", adapter_dirs["acme/support"], PREFERS_MARKER)
    with fleet.admin() as admin:
        admin.register(adapter_id, marker_teacher)
        assert admin.rollout(adapter_id)["status"] == "active"
        admin.promote(adapter_id, 2, expected_live=1, reason="ship it now")
        ended = admin.rollout(adapter_id)
    time.sleep(2)  # a few driver passes: nothing more happens
    events = history(fleet, adapter_id)
    promotes = [e for e in events if e["kind"] == "promote" and e["to_version"] == 2]
    assert len(promotes) == 1 and promotes[0]["actor"].endswith("rollout-test")
    assert events[-1]["kind"] == "promote"
    assert ended["status"] == "superseded"
    assert ended["reason"] == f"promote of version 2 by {promotes[0]['actor']}: ship it now"


def test_the_rollout_commands_and_routes(fleet, adapter_dirs, marker_teacher):
    adapter_id = f"{TENANT}/commands"
    with fleet.admin() as admin:
        admin.create_adapter(adapter_id)
        admin.register(adapter_id, adapter_dirs["acme/support"])
        admin.promote(adapter_id, 1)
        admin.register(adapter_id, marker_teacher)  # no plan in the policy: no rollout
        with pytest.raises(AdminApiError) as no_rollout:
            admin.rollout(adapter_id)
        assert no_rollout.value.status == 404
        with pytest.raises(AdminApiError) as no_judge:
            admin.start_rollout(adapter_id, 2)
        assert no_judge.value.status == 409 and "names no judge" in str(no_judge.value)
        admin.set_policy(adapter_id, {"judge": PREFERS_MARKER})
    env = {**os.environ, "LORALOOP_URL": fleet.server.url, "LORALOOP_ADMIN_KEY": ADMIN_KEY}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "loraloop.serve.cli", "adapters", "rollout", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    started = cli("start", adapter_id, "2", "--reason", "by hand")
    assert "rollout" in started and "[shadow] > canary 10% > canary 50% > watch" in started
    assert "paused" in cli("pause", adapter_id, "--reason", "look first")
    tenant = httpx.post(
        f"{fleet.server.url}/admin/v1/adapters/{adapter_id}/rollout/resume",
        headers={"Authorization": f"Bearer {fleet.key}"},
        json={},
    )
    assert tenant.status_code == 403  # a tenant's key never steers a rollout
    assert "active" in cli("resume", adapter_id)
    shown = cli("status", adapter_id)
    assert "started" in shown and "by hand" in shown
    assert "aborted" in cli("abort", adapter_id, "--reason", "not now")
    kinds = [e["kind"] for e in history(fleet, adapter_id)]
    assert kinds[-4:] == ["rollout_started", "rollout_paused", "rollout_resumed", "rollout_aborted"]


def test_a_killed_server_and_a_killed_driver_leave_the_rollout_to_go_on(
    fleet, adapter_dirs, marker_teacher
):
    adapter_id = new_adapter(fleet, "restart", adapter_dirs["acme/support"], PREFERS_MARKER)
    with fleet.admin() as admin:
        admin.register(adapter_id, marker_teacher)
    traffic = Traffic(fleet, adapter_id)
    at_canary = traffic.until(lambda r: r["stage"] == "canary 10%", "the first canary step")
    fleet.kill_server_and_restart()  # SIGKILL: nothing is flushed, nothing is said
    after = traffic.rollout()
    assert (after["id"], after["stage"], after["status"]) == (
        at_canary["id"],
        "canary 10%",
        "active",
    )
    killed = traffic.rollout()["driver"]
    fleet.kill_trainer_and_restart()  # the driver too; a new one takes the lapsed lease
    wait_until(
        lambda: traffic.rollout()["driver"] not in (None, killed),
        DRIVER_TIMEOUT_S,
        "the new trainer taking the rollout over",
    )
    done = traffic.until(lambda r: r["stage"] == "watch", "the rollout going on")
    assert done["id"] == at_canary["id"]
    drivers = {e["actor"] for e in history(fleet, adapter_id) if e["kind"] == "rollout_advance"}
    assert len(drivers) == 2, drivers  # the killed driver's, then its successor's
    with fleet.admin() as admin:
        assert admin.show_adapter(adapter_id)["live_version"] == 2
    wait_until(lambda: fleet.server.process.poll() is None, 1, "the restarted server")
