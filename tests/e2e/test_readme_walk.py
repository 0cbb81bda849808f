"""The documentation, followed to the letter: every command in the ```sh and ```python blocks
of README.md, of every page in docs/ and of k8s/README.md runs, in reading order, against a
server started the way README.md starts it (`make serve`).

The commands are read from the documents at test time, so the documents and the walk cannot
drift apart; each docs/ page goes on from the state the pages before it left (the server
running, `acme/support` registered, `ACME_KEY` set), and a page left out of DOCUMENTS fails
the walk. ```yaml blocks are configuration to copy, not commands, and are not run.

All shell commands run in one bash process (`set -euo pipefail`), so variables and files made
by one command are there for the next; each python block runs in that shell as a script. A
command fails the walk when it exits non-zero, runs past its timeout, or prints an
OpenAI-shaped error body; `curl` runs with `--fail-with-body`, so an HTTP error is a non-zero
exit even where a documented command says `curl -s`.

What the walk changes, all of it listed below: the documents' address (port 8000) becomes a free
port; `make serve` runs in the background, in its own process group, with a fresh data
directory; commands that need a GPU, a cluster or a Docker engine run in a harmless form
(REWRITES) or not at all (NOT_RUN, each with its reason). Every entry of both tables must still
match a command of its document, so neither can rot silently.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..support import free_port

ROOT = Path(__file__).resolve().parents[2]
# Reading order: a page may use what the ones before it made.
DOCS_PAGES = (
    "api",
    "registry",
    "feedback-and-training",
    "learning-without-labels",
    "rollouts",
    "base-upgrades",
    "console",
    "operating",
    "failure-modes",
    "kubernetes",
    "architecture",
    "development",
)
DOCUMENTS = ("README.md", *(f"docs/{page}.md" for page in DOCS_PAGES), "k8s/README.md")
COMMAND_LANGUAGES = ("sh", "python")
CONFIG_LANGUAGES = ("yaml",)
README_ADDRESSES = ("127.0.0.1:8000", "localhost:8000")
FENCE = re.compile(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# An error body the server sends (serve/errors.py), wherever a command prints one.
ERROR_BODY = re.compile(r'"error"\s*:\s*\{')

COMMAND_TIMEOUT_S = 120
# Longer bounds, by the start of a command: the demo waits for a training run.
SLOW_COMMANDS = {"make demo": 600, "make install-serve": 600, ".venv/bin/python -m pytest": 300}
SERVER_READY_TIMEOUT_S = 300
SERVER_STOP_GRACE_S = 10
LOG_TAIL_CHARS = 6000

# (document, start of a command): why the walk does not run it.
NOT_RUN = {
    ("README.md", "make test"): "it runs this test",
    ("README.md", "make serve TORCH_INDEX="): "the same server, installed from PyTorch's index, "
    "which this machine neither uses nor reaches",
    ("k8s/README.md", "kubectl rollout status"): "needs a cluster",
    ("k8s/README.md", "kubectl port-forward"): "needs a cluster",
    (
        "k8s/README.md",
        'export LORALOOP_ADMIN_KEY="$(kubectl get secret',
    ): "reads the Secret from a cluster",
    ("k8s/README.md", "loraloop tenants list"): "talks to the cluster's server through the "
    "port-forward above",
}


@dataclass(frozen=True)
class Rewrite:
    """A command the walk runs in another form: `pattern` (a regex on the whole command)
    becomes `replace(match, port)`."""

    pattern: str
    replace: Callable[[re.Match, int], str]
    reason: str


START_SERVER = "make serve"
REWRITES = (
    Rewrite(
        r"make demo",
        lambda m, port: f"make demo HOST=127.0.0.1 PORT={port}",
        "the walk's server listens on a free port",
    ),
    Rewrite(
        r"(?s)\.venv/bin/loraloop serve --model \S+.*",
        lambda m, port: f"{m[0]} --help",
        "needs a GPU and the model hub: the options are checked, nothing is served",
    ),
    Rewrite(
        r"docker build .*",
        lambda m, port: "hadolint --failure-threshold style Dockerfile",
        "no Docker engine here: the Dockerfile it builds is linted instead",
    ),
    Rewrite(
        r"kubectl apply -k (\S+)",
        lambda m, port: f"kubectl kustomize {m[1]} >/dev/null",
        "no cluster: what it would apply is rendered instead",
    ),
    Rewrite(
        r"(?s)kubectl create secret .*",
        lambda m, port: f"{m[0]} --dry-run=client -o yaml",
        "no cluster: the Secret is made on the client only",
    ),
)


@dataclass(frozen=True)
class Step:
    document: str
    language: str  # "sh": one command; "python": a whole block
    text: str


# -- reading the documents -----------------------------------------------------------------


def _complete(text: str) -> bool:
    """Whether `text` is whole shell commands (no open quote, `$(`, `|` or `\\`)."""
    if text.rstrip().endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


def shell_commands(block: str) -> list[str]:
    """The commands of a ```sh block, each with its continuation lines; comments dropped."""
    commands, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if _complete(pending):
            commands.append(pending.rstrip())
            pending = ""
    assert not pending, f"a command in this block never ends:\n{block}"
    return commands


def steps(document: str) -> list[Step]:
    text = (ROOT / document).read_text()
    found = []
    for match in FENCE.finditer(text):
        language, block = match[1], match[2]
        assert language in COMMAND_LANGUAGES + CONFIG_LANGUAGES, (
            f"{document} has a ```{language} block; tag it ```sh or ```python so that this "
            f"walk runs it:\n{block}"
        )
        if language in CONFIG_LANGUAGES:
            continue
        if language == "python":
            found.append(Step(document, "python", block))
        else:
            found += [Step(document, "sh", command) for command in shell_commands(block)]
    return found


def _bare(command: str) -> str:
    """The command without its comments, for matching against the tables."""
    lines = []
    for line in command.splitlines():
        for comment in re.finditer(r"(?<=\s)#", line):
            try:  # a `#` outside quotes starts a comment
                shlex.split("\n".join([*lines, line[: comment.start()]]))
            except ValueError:
                continue
            line = line[: comment.start()]
            break
        lines.append(line.rstrip())
    return "\n".join(lines).strip()


def not_run_entry(step: Step) -> tuple[str, str] | None:
    """The NOT_RUN key that covers this command, if any (the longest start wins)."""
    bare = _bare(step.text)
    keys = [key for key in NOT_RUN if key[0] == step.document and bare.startswith(key[1])]
    return max(keys, key=lambda key: len(key[1])) if keys else None


def rewritten(step: Step, port: int) -> tuple[str, Rewrite | None]:
    text = step.text
    for address in README_ADDRESSES:
        text = text.replace(address, address.replace(":8000", f":{port}"))
    if step.language == "sh":
        for rule in REWRITES:
            if match := re.fullmatch(rule.pattern, _bare(text)):
                return rule.replace(match, port), rule
    return text, None


# -- one bash process ----------------------------------------------------------------------


class WalkFailed(AssertionError):
    pass


class Shell:
    """One bash process, fed one command at a time; stdout and stderr come back merged."""

    def __init__(self, env: dict[str, str]) -> None:
        self.marker = f"__walk_done_{secrets.token_hex(8)}__"
        self.transcript: list[str] = []
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=ROOT,
            env=env,
            text=True,
            bufsize=1,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        # An HTTP error status fails curl, and shows the error body.
        self.run('curl() { command curl --fail-with-body "$@"; }', echo=False)

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S, echo: bool = True) -> str:
        if echo:
            self.transcript.append(f"$ {command}\n")
        # Its own stdin is /dev/null: a command that reads stdin must not eat the next ones.
        self._send(
            f"set -euo pipefail\n{{ {command}\n}} </dev/null\nprintf '\\n%s\\n' {self.marker}\n"
        )
        started = time.monotonic()
        output = self._output_until_marker(command, timeout_s)
        if echo:
            self.transcript.append(f"# done in {time.monotonic() - started:.1f} s\n")
        if ERROR_BODY.search(output):
            raise WalkFailed(f"`{command}` printed an error body:\n{output}")
        return output

    def _send(self, text: str) -> None:
        try:
            self.process.stdin.write(text)
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WalkFailed(f"the shell is gone (exit {self.process.wait()})") from None

    def _output_until_marker(self, command: str, timeout_s: float) -> str:
        deadline, output = time.monotonic() + timeout_s, []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WalkFailed(
                    f"`{command}` ran past {timeout_s:.0f} s; its output so far:\n{''.join(output)}"
                ) from None
            if line is None:
                raise WalkFailed(
                    f"`{command}` exited {self.process.wait(timeout=10)}:\n{''.join(output)}"
                )
            if line.rstrip("\n") == self.marker:
                self.transcript += output
                return "".join(output)
            output.append(line)

    def close(self) -> None:
        _kill_group(self.process.pid, grace_s=0)
        self.process.wait(timeout=10)


def _kill_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the process group, then SIGKILL whatever of it is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether the process runs (not our child: once it exits, its zombie waits for bash)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the server `make serve` starts --------------------------------------------------------


class Server:
    """`make serve` started from the walk's shell, in its own process group, logging to a file."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path, self.pid_path = workdir / "make-serve.log", workdir / "make-serve.pid"
        self.pgid: int | None = None

    def command(self, port: int) -> str:
        return (
            f"setsid make serve HOST=127.0.0.1 PORT={port} >{self.log_path} 2>&1 "
            f"</dev/null & echo $! >{self.pid_path}"
        )

    def wait_ready(self) -> None:
        self.pgid = int(self.pid_path.read_text())
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _alive(self.pgid):  # the group itself may not exist yet
                raise WalkFailed("`make serve` exited before the server was ready")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise WalkFailed(f"the server was not ready after {SERVER_READY_TIMEOUT_S} s")

    def log(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        if self.pgid is not None:
            _kill_group(self.pgid, grace_s=SERVER_STOP_GRACE_S)


# -- the walk ------------------------------------------------------------------------------


def walk_env(tmp_path: Path, url: str) -> dict[str, str]:
    """A user's terminal: none of this process's LORALOOP_* settings, make state or virtual
    environment (the README puts .venv/bin on PATH itself); a fresh data directory, and the
    CLI pointed at the walk's server."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LORALOOP_", "MAKE", "MFLAGS", "VIRTUAL_ENV"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    (tmp_path / "tmp").mkdir()
    env.update(
        LORALOOP_DATA_DIR=str(tmp_path / "data"), LORALOOP_URL=url, TMPDIR=str(tmp_path / "tmp")
    )
    return env


def timeout_for(command: str) -> float:
    starts = [(len(s), t) for s, t in SLOW_COMMANDS.items() if command.startswith(s)]
    return max(starts)[1] if starts else COMMAND_TIMEOUT_S


def run_step(
    step: Step, index: int, shell: Shell, server: Server, port: int, workdir: Path
) -> Rewrite | None:
    command, rule = rewritten(step, port)
    if step.language == "python":
        script = workdir / f"readme-block-{index}.py"
        script.write_text(command)
        shell.transcript.append(f"$ cat {script.name}\n{command}")
        shell.run(f"python {script}")
    elif _bare(command) == START_SERVER:
        started = time.monotonic()
        shell.run(server.command(port))
        server.wait_ready()
        shell.transcript.append(f"# server ready in {time.monotonic() - started:.0f} s\n")
    else:
        shell.run(command, timeout_for(command))
    return rule


def failure_report(error: Exception, step: Step, shell: Shell, server: Server) -> str:
    return (
        f"{step.document}: `{step.text}` failed: {error}\n\n"
        f"--- the walk so far (last part) ---\n{''.join(shell.transcript)[-LOG_TAIL_CHARS:]}"
        f"\n--- make serve's log (last part) ---\n{server.log()}"
    )


def all_steps() -> list[Step]:
    return [step for document in DOCUMENTS for step in steps(document)]


def walk(
    walked: list[Step], shell: Shell, server: Server, port: int, workdir: Path
) -> tuple[list, list, set]:
    ran, skipped, rules_used = [], [], set()
    for index, step in enumerate(walked):
        if entry := not_run_entry(step):
            skipped.append(entry)
            shell.transcript.append(f"# not run: {step.text}  ({NOT_RUN[entry]})\n")
            continue
        try:
            rule = run_step(step, index, shell, server, port, workdir)
        except Exception as exc:  # every failure comes with the transcript and the log
            pytest.fail(failure_report(exc, step, shell, server), pytrace=False)
        rules_used.add(rule)
        ran.append(step)
    return ran, skipped, rules_used


# -- the tests -----------------------------------------------------------------------------


def test_every_docs_page_is_walked():
    pages = {path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md")}
    assert pages == set(DOCUMENTS) - {"README.md", "k8s/README.md"}, (
        "DOCS_PAGES and docs/*.md differ: add a new page to DOCS_PAGES in its reading order, "
        "or drop a removed one"
    )


def test_tables_name_commands_in_the_documents():
    """Both tables still match their documents: cheap, and runs without the slow walk."""
    walked = all_steps()
    for document, start in NOT_RUN:
        assert any(not_run_entry(s) == (document, start) for s in walked), (
            f"NOT_RUN names `{start}`, which {document} no longer has: remove it from the table"
        )
    for rule in REWRITES:
        assert any(rewritten(s, 8000)[1] is rule for s in walked), (
            f"REWRITES has `{rule.pattern}`, which no documented command matches: remove it"
        )
    assert sum(_bare(s.text) == START_SERVER for s in walked) == 1, (
        f"README.md must start the server once, with `{START_SERVER}`"
    )


@pytest.mark.slow
def test_readme_walk(tmp_path):
    walked, port = all_steps(), free_port()
    server = Server(port, tmp_path)
    shell = Shell(walk_env(tmp_path, server.url))
    try:
        ran, skipped, rules_used = walk(walked, shell, server, port, tmp_path)
        # The server the README started is still up, and auth is on, as README.md says.
        assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 200, server.log()
        assert httpx.get(f"{server.url}/admin/v1/tenants", timeout=10).status_code == 401
    finally:
        server.stop()
        shell.close()
        (tmp_path / "walk.log").write_text("".join(shell.transcript))
    assert server.pgid is not None, "README.md never ran `make serve`"
    assert len(ran) + len(skipped) == len(walked)
    assert set(skipped) == set(NOT_RUN)
    assert set(REWRITES) <= rules_used
