"""The operator command line against a real server, as operators run it.

Every command runs as `python -m loraloop.serve.cli ...` in a subprocess, so the real entry
point, exit codes and stdout/stderr split are what is checked. Which version serves is
checked from the other side, with the official `openai` client and the tenant key the CLI
issued. The tests in this module share one server and run in file order: the release
lifecycle builds on the registered versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from loraloop.trainer.demo_model import build_demo_model, build_random_adapter

from ..support import ServerProcess, free_port

ADMIN_KEY = "cli-test-admin-key-0123456789"
ACTOR = "alice"
TENANT = "acme"
ADAPTER = "acme/support"
CLI_TIMEOUT_S = 180


class Cli:
    """`loraloop` as a subprocess, pointed at one server through the environment."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(
        self, *args: str, url: str | None = None, admin_key: str = ADMIN_KEY
    ) -> subprocess.CompletedProcess:
        # The caller's own LORALOOP_* settings must not leak into the commands under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LORALOOP_")}
        env.update(LORALOOP_URL=url or self.url, LORALOOP_ADMIN_KEY=admin_key, LORALOOP_ACTOR=ACTOR)
        return subprocess.run(
            [sys.executable, "-m", "loraloop.serve.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        done = self.run(*args)
        assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        # The admin options belong to the command group: `loraloop adapters --json list`.
        group, *rest = args
        return json.loads(self.ok(group, "--json", *rest).stdout)


def assert_clean_failure(done: subprocess.CompletedProcess, code: int) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def served_model(server: ServerProcess, api_key: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    return reply.model


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("cli-model") / "demo")


@pytest.fixture(scope="module")
def server(cli_model, tmp_path_factory):
    server = ServerProcess(
        [
            "--model",
            str(cli_model),
            "--engine",
            "reference",
            "--data-dir",
            str(tmp_path_factory.mktemp("cli-data")),
        ],
        tmp_path_factory.mktemp("cli-logs") / "server.log",
        env={"LORALOOP_ADMIN_KEY": ADMIN_KEY},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cli(server) -> Cli:
    return Cli(server.url)


@pytest.fixture(scope="module")
def adapter_dirs(cli_model, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cli-adapters")
    return [build_random_adapter(cli_model, root / f"seed{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def issued(cli) -> subprocess.CompletedProcess:
    """The tenant, and the run of `keys create` that issued its key."""
    cli.ok("tenants", "create", TENANT)
    return cli.ok("tenants", "keys", "create", TENANT, "--label", "cli-test")


@pytest.fixture(scope="module")
def tenant_key(issued) -> str:
    return issued.stdout.strip()


@pytest.fixture(scope="module")
def registrations(cli, issued, adapter_dirs) -> list[subprocess.CompletedProcess]:
    """The adapter, its first version registered twice (the second time with --json), then
    a second version with lineage, metrics and tags."""
    first, second = map(str, adapter_dirs)
    cli.ok("adapters", "create", ADAPTER, "--description", "support answers")
    return [
        cli.ok("adapters", "register", ADAPTER, first, "--reason", "first cut"),
        cli.ok("adapters", "--json", "register", ADAPTER, first),
        cli.ok(
            "adapters",
            "register",
            ADAPTER,
            second,
            "--parent",
            "1",
            "--metric",
            "acc=0.9",
            "--tag",
            "run=x",
            "--reason",
            "more data",
        ),
    ]


# -- tenants and keys ----------------------------------------------------------------------


def test_key_is_printed_once_then_listed_by_prefix(cli, issued, tenant_key):
    assert tenant_key.startswith("llk_") and len(tenant_key) >= 40
    assert issued.stdout.count(tenant_key) == 1
    assert "will not be shown again" in issued.stderr
    assert tenant_key not in issued.stderr
    listed = cli.ok("tenants", "keys", "list", TENANT).stdout
    assert tenant_key[:12] in listed and "cli-test" in listed
    assert tenant_key not in listed
    assert TENANT in cli.ok("tenants", "list").stdout


# -- registering ---------------------------------------------------------------------------


def test_registering_the_same_files_twice_gives_the_same_version(registrations):
    first, again, second = registrations
    assert first.stdout.strip() == f"registered {ADAPTER} version 1"
    assert "uploading 2 files (" in first.stderr and "KB)" in first.stderr
    assert json.loads(again.stdout)["version"] == 1  # stdout is the JSON alone
    assert "already registered as version 1" in again.stderr
    assert second.stdout.strip() == f"registered {ADAPTER} version 2"


def test_versions_record_lineage_metrics_and_tags(cli, registrations):
    versions = cli.json("adapters", "versions", ADAPTER)
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["status"] for v in versions] == ["candidate", "candidate"]
    assert versions[1]["parent_version"] == 1
    assert versions[1]["metrics"] == {"acc": 0.9} and versions[1]["tags"] == {"run": "x"}
    assert all(v["created_by"] == f"admin:{ACTOR}" for v in versions)
    table = cli.ok("adapters", "versions", ADAPTER).stdout
    assert versions[1]["content_hash"][:12] in table and "candidate" in table


def test_list_and_show_as_json(cli, registrations):
    listed = cli.json("adapters", "list", "--tenant", TENANT)
    assert [a["id"] for a in listed] == [ADAPTER]
    assert listed[0]["latest_version"] == 2 and listed[0]["live_version"] is None
    shown = cli.json("adapters", "show", ADAPTER)
    assert shown["adapter"]["description"] == "support answers"
    assert [v["version"] for v in shown["versions"]] == [1, 2]


# -- releasing -----------------------------------------------------------------------------


def test_release_lifecycle_moves_what_serves(cli, server, tenant_key, registrations):
    assert (
        "live version 1"
        in cli.ok("adapters", "promote", ADAPTER, "1", "--reason", "ship it").stdout
    )
    assert served_model(server, tenant_key, ADAPTER) == f"{ADAPTER}@1"
    cli.ok("adapters", "promote", ADAPTER, "2", "--expected-live", "1", "--reason", "better")
    assert served_model(server, tenant_key, ADAPTER) == f"{ADAPTER}@2"

    stale = cli.run("adapters", "promote", ADAPTER, "1", "--expected-live", "1")
    assert_clean_failure(stale, 1)
    assert stale.stderr.startswith(f"error: The live version of '{ADAPTER}' is 2, not 1")

    canary = cli.json(
        "adapters", "canary", "set", ADAPTER, "1", "--percent", "10", "--reason", "compare"
    )
    assert (canary["canary_version"], canary["canary_percent"]) == (1, 10)
    cleared = cli.json("adapters", "canary", "clear", ADAPTER, "--reason", "enough")
    assert cleared["canary_version"] is None and cleared["live_version"] == 2
    assert (
        "live version 1" in cli.ok("adapters", "rollback", ADAPTER, "--reason", "regressed").stdout
    )
    assert served_model(server, tenant_key, ADAPTER) == f"{ADAPTER}@1"
    assert cli.json("adapters", "reject", ADAPTER, "2", "--reason", "bad")["status"] == "rejected"


def test_history_records_every_change_in_order(cli):
    events = cli.json("adapters", "history", ADAPTER)
    assert [(e["kind"], e["from_version"], e["to_version"], e["reason"]) for e in events] == [
        ("adapter_created", None, None, None),
        ("register", None, 1, "first cut"),
        ("register", None, 2, "more data"),
        ("promote", None, 1, "ship it"),
        ("promote", 1, 2, "better"),
        ("canary_set", None, 1, "compare"),
        ("canary_cleared", 1, None, "enough"),
        ("rollback", 2, 1, "regressed"),
        ("reject", 2, None, "bad"),
    ]
    assert all(ACTOR in e["actor"] for e in events)


def test_policy_show_and_set_round_trip(cli, registrations):
    defaults = cli.json("adapters", "policy", "show", ADAPTER)
    assert defaults["record_completions"] is False
    cli.ok(
        "adapters",
        "policy",
        "set",
        ADAPTER,
        "min_pairs=16",
        "record_completions=true",
        "gate.min_accuracy=0.7",
    )
    shown = cli.json("adapters", "policy", "show", ADAPTER)
    assert (shown["min_pairs"], shown["record_completions"]) == (16, True)
    assert shown["gate"]["min_accuracy"] == 0.7
    assert "min_pairs" in cli.ok("adapters", "policy", "show", ADAPTER).stdout
    assert cli.json("adapters", "history", ADAPTER)[-1]["kind"] == "policy_set"


# -- failures ------------------------------------------------------------------------------


def test_a_refused_adapter_lists_every_problem(cli, issued, adapter_dirs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((adapter_dirs[0] / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": 100000}))
    weights = (adapter_dirs[0] / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    cli.ok("adapters", "create", "acme/broken")

    refused = cli.run("adapters", "register", "acme/broken", str(broken))
    assert_clean_failure(refused, 1)
    problems = [line for line in refused.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2
    assert any("maximum rank" in p for p in problems)
    assert any("adapter_model.safetensors is corrupt" in p for p in problems)
    assert cli.json("adapters", "versions", "acme/broken") == []


def test_a_wrong_admin_key_is_refused(cli):
    done = cli.run("tenants", "list", admin_key="not-the-admin-key-at-all")
    assert_clean_failure(done, 1)
    assert done.stderr.startswith("error: The API key is not valid")
    assert "LORALOOP_ADMIN_KEY" in done.stderr


def test_an_unreachable_server_exits_2_naming_it(cli):
    url = f"http://127.0.0.1:{free_port()}"
    done = cli.run("adapters", "list", url=url)
    assert_clean_failure(done, 2)
    assert f"cannot reach the loraloop server at {url}" in done.stderr


def test_bad_metric_syntax_is_a_usage_error(cli, adapter_dirs):
    done = cli.run("adapters", "register", ADAPTER, str(adapter_dirs[0]), "--metric", "acc")
    assert_clean_failure(done, 2)
    assert "--metric" in done.stderr and "KEY=VALUE" in done.stderr
