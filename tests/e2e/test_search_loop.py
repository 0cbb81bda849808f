"""A run that searches hyperparameters, end to end: the search set with `loraloop adapters
policy set`, feedback over HTTP, the trainer sidecar (its own process) trying the trials, the
trial table recorded with the version and printed by `loraloop adapters runs`.

The reference engine serves: the trainer does the work here, and vLLM has tests of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loraloop.adapters.search_trials import search_trials_from_tags
from loraloop.serve.cli.client import AdminClient
from loraloop.serve.cli.demo import DEMO_POLICY, preference_feedback, user_messages

from ..conftest import ADMIN_KEY, start_server
from .test_training_loop import send_batch, start_trainer, stop, wait_for_run

ADAPTER = "loop/searched"
PAIRS = 16


def loraloop(server, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORALOOP_")}
    env.update(LORALOOP_URL=server.url, LORALOOP_ADMIN_KEY=ADMIN_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "loraloop.serve.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    server = start_server(
        ["--model", str(demo_model), "--engine", "reference"],
        tmp_path_factory.mktemp("logs") / "search-server.log",
        tmp_path_factory.mktemp("search-data"),
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trainer(server, demo_model, tmp_path_factory):
    process = start_trainer(
        demo_model, server.data_dir, tmp_path_factory.mktemp("logs") / "search-trainer.log"
    )
    yield process
    stop(process)


@pytest.fixture(scope="module")
def admin(server, adapter_dirs):
    with AdminClient(server.url, ADMIN_KEY, actor="search-test") as client:
        client.create_tenant("loop")
        server.tenant_keys["loop"] = client.issue_key("loop")["key"]
        client.create_adapter(ADAPTER)
        client.register(ADAPTER, adapter_dirs["acme/support"])
        client.promote(ADAPTER, 1)
        yield client


def test_a_searching_run_records_its_trials_and_runs_prints_them(server, trainer, admin):
    # Drift measured on two prompts keeps each trial's guard cheap, and one epoch with no
    # floor of steps (search.epochs below) its training.
    admin.set_policy(
        ADAPTER,
        {
            **DEMO_POLICY,
            "min_pairs": PAIRS,
            "min_steps": 1,
            "golden_prompts": user_messages(2, seed=3),
        },
    )
    # `search` is unset (null) so far: the command line starts it from these keys.
    loraloop(
        server,
        "adapters",
        "policy",
        "set",
        ADAPTER,
        "search.trials=2",
        "search.epochs=[1,1]",
        "search.learning_rate=[0.005,0.05]",
    )
    assert admin.policy(ADAPTER)["search"]["trials"] == 2

    send_batch(server, preference_feedback(ADAPTER, user_messages(PAIRS, seed=21)))
    run = wait_for_run(admin, ADAPTER, trainer)
    assert run["status"] in ("promoted", "rejected", "candidate"), run
    assert run["metrics"]["search_trials"] == 2

    version = admin.show_version(ADAPTER, run["candidate_version"])
    trials = search_trials_from_tags(version["tags"])
    best = trials[int(version["metrics"]["search_best_trial"])]
    assert [t.number for t in trials] == [0, 1]
    assert all(t.rank is None and t.kl_from_live is not None for t in trials)  # parent's
    # The lineage names the hyperparameters the version was trained with: the best trial's.
    assert float(version["tags"]["beta"]) == pytest.approx(best.beta, rel=1e-3)
    assert float(version["tags"]["learning_rate"]) == pytest.approx(best.learning_rate, rel=1e-3)
    assert version["tags"]["epochs"] == "1"

    printed = loraloop(server, "adapters", "runs", ADAPTER).stdout
    assert f"run {run['id']}: 2 trials on" in printed
    assert f"trial {best.number} went to the gate" in printed
    assert "val accuracy" in printed and "parent's" in printed
    rows = [
        row
        for row in map(str.split, printed.splitlines())
        if len(row) > 1 and row[1] in ("feasible", "drifted")
    ]
    assert [(row[0], row[2]) for row in rows] == [(str(t.number), str(t.beta)) for t in trials]
