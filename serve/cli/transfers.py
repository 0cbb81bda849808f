"""`loraloop adapters transfer|transfers` and `loraloop base migrate`: adapter versions
carried to a new base model by the trainers, watched until each job ends.

A migration can be run again at any time: jobs that passed are kept (not redone), queued and
running ones are watched again, and rejected or failed ones are queued anew.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer

from loraloop.adapters.names import BASE_NAME_HELP, is_valid_base_name

from .client import AdminClient
from .output import emit, note, print_table
from .session import AdapterArg, ReasonOpt, session_of

app = typer.Typer()
base_app = typer.Typer()
ENDED = ("passed", "rejected", "failed")
UNCLAIMED_HINT_S = 60  # a job still queued this long: perhaps no trainer knows its target


def _check_base_name(value: str) -> str:
    if not is_valid_base_name(value):
        raise typer.BadParameter(f"'{value}': {BASE_NAME_HELP}.")
    return value


ToBase = Annotated[
    str,
    typer.Option(
        "--to-base",
        "--to",
        metavar="NAME",
        callback=_check_base_name,
        help="The new base model, by the name the trainers' LORALOOP_TRANSFER_TARGETS give it.",
    ),
]
PollOpt = Annotated[float, typer.Option(min=0.1, help="Seconds between looks at the jobs.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        min=1, help="Stop watching after this many seconds (the jobs go on); exit status 3."
    ),
]


def _seconds(job: dict) -> str | None:
    seconds = job["metrics"].get("transfer_seconds")
    if seconds is None and job["started_at"] and job["finished_at"]:
        seconds = (
            datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
        ).total_seconds()
    return None if seconds is None else f"{seconds:.0f}s"


def _figure(job: dict, name: str) -> str | None:
    value = job["metrics"].get(name)
    return None if value is None else f"{value:.3f}"


def jobs_table(jobs: list[dict]) -> None:
    """One row per job; the reason of those that did not pass (a passed job's is in the
    watch lines, and in the API)."""
    print_table(
        (
            "adapter",
            "from",
            "to base",
            "version",
            "agreement",
            "KL",
            "untrained KL",
            "status",
            "time",
            "reason",
        ),
        (
            (
                j["adapter"],
                j["from_version"],
                j["to_base"],
                j["result_version"],
                _figure(j, "transfer_agreement"),
                _figure(j, "transfer_kl"),
                _figure(j, "transfer_untrained_kl"),
                j["status"],
                _seconds(j),
                None if j["status"] == "passed" else j["reason"],
            )
            for j in sorted(jobs, key=lambda job: job["adapter"])
        ),
    )


def _state(job: dict) -> tuple:
    """What a watcher reports a change of: the status, the attempt, the epoch."""
    return job["status"], job["attempts"], job["progress"].get("epoch")


def _describe(job: dict) -> str:
    if job["status"] == "running":
        progress = job["progress"]
        where = (
            f", epoch {progress['epoch']}, loss {progress['loss']:.3g}"
            if "epoch" in progress
            else ""
        )
        again = f" (attempt {job['attempts']})" if job["attempts"] > 1 else ""
        return f"running on {job['worker']}{again}{where}"
    if job["status"] == "passed":
        return (
            f"passed: version {job['result_version']}, agreement "
            f"{_figure(job, 'transfer_agreement')}, KL {_figure(job, 'transfer_kl')}"
        )
    return job["status"] + (f": {job['reason']}" if job["reason"] else "")


def watch(
    client: AdminClient, ids: list[int], *, poll_s: float, timeout_s: float | None
) -> list[dict]:
    """Poll the jobs until every one ended, with a line on stderr whenever one changes;
    typer.Exit(3) at the timeout."""
    started, hinted = time.monotonic(), False
    seen: dict[int, tuple] = {}
    while True:
        jobs = client.find_transfers(ids)
        elapsed = time.monotonic() - started
        for job in jobs:
            if seen.get(job["id"]) != _state(job):
                seen[job["id"]] = _state(job)
                note(f"[{elapsed:4.0f}s] {job['adapter']}@{job['from_version']}: {_describe(job)}")
        ended = sum(job["status"] in ENDED for job in jobs)
        if ended == len(jobs):
            return jobs
        queued = [job for job in jobs if job["status"] == "queued"]
        if queued and not hinted and elapsed > UNCLAIMED_HINT_S:
            hinted = True
            note(waiting_hint(client, queued, jobs))
        if timeout_s is not None and elapsed > timeout_s:
            note(
                f"stopped watching after {timeout_s:.0f}s: {ended} of {len(jobs)} jobs ended; "
                "the others go on (run the command again to watch them)"
            )
            raise typer.Exit(3)
        time.sleep(poll_s)


def waiting_hint(client: AdminClient, queued: list[dict], jobs: list[dict]) -> str:
    """Why jobs may still be queued: the trainers that know the base are busy with other
    jobs (named), or none knows it."""
    to_base = queued[0]["to_base"]
    running = [job for job in jobs if job["status"] == "running"] or [
        job for job in client.find_transfers_to(to_base) if job["status"] == "running"
    ]
    waiting = f"{len(queued)} jobs still queued after {UNCLAIMED_HINT_S}s"
    if not running:
        return f"{waiting}: is a trainer running with '{to_base}' in its LORALOOP_TRANSFER_TARGETS?"
    busy = "; ".join(
        f"{job['worker']} is running job {job['id']} ({job['adapter']}@{job['from_version']})"
        for job in running[:3]
    )
    return f"{waiting} while the trainers work on others: {busy}. Each takes the next when done"


def _ended(jobs: list[dict], as_json: bool) -> None:
    """The jobs as a table (or JSON); exit status 1 unless every one passed."""
    emit(jobs, as_json, jobs_table)
    if any(job["status"] != "passed" for job in jobs):
        raise typer.Exit(1)


@app.command("transfer")
def transfer(
    ctx: typer.Context,
    adapter: AdapterArg,
    to_base: ToBase,
    version: Annotated[
        int | None, typer.Option(min=1, help="The version to carry (default: the live one).")
    ] = None,
    reason: ReasonOpt = None,
    wait: Annotated[bool, typer.Option(help="Watch the job until it ends.")] = False,
    poll_s: PollOpt = 2.0,
    timeout_s: TimeoutOpt = None,
) -> None:
    """Ask the trainers to carry a version of the adapter to another base model."""
    session = session_of(ctx)
    with session.client() as client:
        job, created = client.queue_transfer(adapter, to_base, version=version, reason=reason)
        note(
            f"{'queued' if created else 'found'} transfer job {job['id']}: "
            f"{adapter}@{job['from_version']} to base '{to_base}' ({job['status']})"
        )
        if not wait:
            emit(job, session.as_json, lambda j: jobs_table([j]))
            return
        jobs = watch(client, [job["id"]], poll_s=poll_s, timeout_s=timeout_s)
    _ended(jobs, session.as_json)


@app.command("transfers")
def transfers(
    ctx: typer.Context,
    adapter: AdapterArg,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
) -> None:
    """The adapter's transfer jobs, newest first, with the transfer gate's figures."""
    session = session_of(ctx)
    with session.client() as client:
        emit(client.transfers(adapter, limit), session.as_json, jobs_table)


@base_app.command("migrate")
def migrate(
    ctx: typer.Context,
    to_base: ToBase,
    reason: ReasonOpt = None,
    wait: Annotated[bool, typer.Option(help="Watch the jobs until each ends.")] = True,
    poll_s: PollOpt = 2.0,
    timeout_s: TimeoutOpt = None,
) -> None:
    """Carry every adapter live on the server's base model to the new one, then watch.

    Safe to run again: passed jobs are kept, unfinished ones watched, rejected or failed
    ones queued anew. Exit status 0 when every job passed, 1 otherwise, 3 at --timeout-s."""
    session = session_of(ctx)
    with session.client() as client:
        migration = client.migrate(to_base, reason)
        jobs = migration["jobs"]
        note(
            f"{len(jobs)} adapters to carry to base '{to_base}': "
            f"{len(migration['queued'])} queued now, {len(jobs) - len(migration['queued'])} "
            "found queued, running or passed already"
        )
        if wait and jobs:
            jobs = watch(client, [job["id"] for job in jobs], poll_s=poll_s, timeout_s=timeout_s)
    if not wait:
        emit(jobs, session.as_json, jobs_table)
        return
    _ended(jobs, session.as_json)
