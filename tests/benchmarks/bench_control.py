"""Control-plane timings: version swaps, cold adapter loads, feedback ingestion, the loop.

(a) swap: promote v2 through the admin API and time the first response served by v2; time a
    first request pinned to a never-loaded version against one to a loaded version, at LoRA
    ranks 8, 16 and 64.
(b) feedback: durable feedback events/s and server CPU per event from 16 concurrent clients,
    each event with its own Idempotency-Key, against a bare FastAPI endpoint that parses the
    same model and stores nothing (the in-run ceiling); then 1,000-line batches; SQLite, then
    PostgreSQL.
(c) loop: the demo's marker feedback (48 preference pairs) with the trainer sidecar running,
    from the last feedback acknowledged to the new version answering, in stages.

    .venv/bin/python -m tests.benchmarks.bench_control [--model tiny|0.5b]
        [--parts swap,feedback,loop] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import FastAPI, Header, Response

from loraloop.serve.cli.demo import DEMO_POLICY, FEEDBACK_PAIRS, preference_feedback, user_messages
from loraloop.serve.feedback.protocol import FeedbackRequest

from ..support import free_port, fresh_postgres_database
from . import common

RANKS = (8, 16, 64)
FEEDBACK_CLIENTS = 16
FEEDBACK_EVENTS = {False: 1216, True: 336}  # per run, by --quick; the first 16 warm up
FEEDBACK_ROUNDS = 2  # of (bare, loraloop) back to back: ratios within a round
BATCH_LINES, BATCH_CLIENTS = 1000, 2
BATCHES = {False: 10, True: 3}  # timed, after one to warm up
LORA_SETTINGS = {"max_lora_rank": 64, "max_loras": 8, "max_cpu_loras": 32}
PARTS = ("swap", "feedback", "loop")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+: run (\d+): step=")


def chat(url: str, model: str, max_tokens: int = 1) -> tuple[float, str]:
    """(seconds, the version that answered) for one greedy, non-streamed chat request; one
    token by default, so that the timing is the routing, the adapter and the prefill."""
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/chat/completions",
        timeout=120,
        headers={"Authorization": f"Bearer {common.ADMIN_KEY}"},
        json={
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": "where is my order?"}],
        },
    )
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["model"]


def adapter_loads(url: str) -> tuple[float, float]:
    """The server's adapter loads into the engine: (count, seconds spent), from /metrics."""
    text = httpx.get(
        f"{url}/metrics", timeout=30, headers={"Authorization": f"Bearer {common.ADMIN_KEY}"}
    ).text

    def sample(pattern: str) -> float:
        found = re.search(rf"^{pattern} (\S+)$", text, re.M)
        return float(found.group(1)) if found else float("nan")

    return (
        sample(r'loraloop_adapter_loads_total\{outcome="loaded"\}'),
        sample("loraloop_adapter_load_seconds_sum"),
    )


def swap_at_rank(server, model: Path, root: Path, rank: int, repeats: int) -> dict:
    from loraloop.trainer.demo_model import build_random_adapters

    name = f"swap/r{rank}"
    dirs = build_random_adapters(
        model, {root / f"r{rank}-v{v}": 100 * rank + v for v in (1, 2, 3)}, rank=rank
    )
    with common.admin(server) as client:
        common.register_live(client, name, dirs[0])
        for directory in dirs[1:]:
            client.register(name, directory, source="bench")
        for _ in range(3):
            chat(server.url, name)  # v1 warm and answering
        before = adapter_loads(server.url)
        started = time.perf_counter()
        client.promote(name, 2, expected_live=1)
        returned = time.perf_counter()
    while (answered := chat(server.url, name))[1] != f"{name}@2":
        pass
    first_v2_s, promote_s = time.perf_counter() - returned, returned - started
    # v2's one load: read after the first v2 response, so as not to delay it; the promote's
    # warm-up and that request together load it once.
    promote_loads = adapter_loads(server.url)[0] - before[0]
    loaded = sorted(chat(server.url, f"{name}@2")[0] for _ in range(repeats))
    loads_before = adapter_loads(server.url)
    cold_s, version = chat(server.url, f"{name}@3")
    assert version == f"{name}@3", version
    # Evidence that the pinned request really loaded its version into the engine.
    cold_loads, load_s = (
        after - before
        for after, before in zip(adapter_loads(server.url), loads_before, strict=True)
    )
    warm_s = common.percentile(loaded, 50)
    return {
        "rank": rank,
        "promote_call_ms": promote_s * 1000,
        "loads_in_promote": promote_loads,
        "promote_to_first_v2_response_ms": first_v2_s * 1000,
        "first_v2_request_ms": answered[0] * 1000,
        "loaded_request_p50_ms": warm_s * 1000,
        "cold_request_ms": cold_s * 1000,
        "cold_added_ms": (cold_s - warm_s) * 1000,
        "engine_loads_during_cold_request": cold_loads,
        "engine_load_ms": load_s * 1000,
    }


def bare_feedback_app() -> FastAPI:
    """The in-run ceiling for feedback: FastAPI parsing the same wire model, storing
    nothing, answering 201. Served by uvicorn in its own process (see `bare_server`)."""
    app = FastAPI()

    @app.post("/v1/feedback", status_code=201)
    async def accept(
        body: FeedbackRequest, key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
    ):
        return Response(status_code=201)

    @app.get("/ready")
    async def ready() -> dict:
        return {}

    return app


def _wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s")


@contextmanager
def bare_server(root: Path) -> Iterator[tuple[int, str]]:
    """(pid, url) of `bare_feedback_app` under uvicorn (uvloop, httptools: as `serve`)."""
    port = free_port()
    log = (root / "bare.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"{__spec__.name}:bare_feedback_app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[2],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/ready")
        yield process.pid, url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def post_feedback(url: str, key: str, events: list[dict]) -> float:
    """Seconds for FEEDBACK_CLIENTS clients to have every event acknowledged (201), each
    event sent once with an Idempotency-Key of its own."""
    queue: asyncio.Queue = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as http:

        async def worker() -> None:
            while not queue.empty():
                response = await http.post(
                    "/v1/feedback",
                    json=queue.get_nowait(),
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                if response.status_code != 201:
                    raise RuntimeError(
                        f"feedback refused: {response.status_code} {response.text[:300]}"
                    )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(FEEDBACK_CLIENTS)))
        return time.perf_counter() - started


async def post_batches(url: str, key: str, batches: list[str]) -> float:
    """Seconds for BATCH_CLIENTS clients to have every line of every batch stored (201)."""
    queue: asyncio.Queue = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}
    ) as http:

        async def worker() -> None:
            while not queue.empty():
                response = await http.post("/v1/feedback/batch", content=queue.get_nowait())
                response.raise_for_status()
                if response.json()["failed"]:
                    raise RuntimeError(f"batch lines refused: {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(BATCH_CLIENTS)))
        return time.perf_counter() - started


def measured(pid: int, events: int, run) -> dict:
    """events/s and the server's CPU ms per event (its process, every thread) for `run`."""
    cpu = common.cpu_seconds(pid)
    wall_s = run()
    cpu_ms = (common.cpu_seconds(pid) - cpu) * 1000
    return {
        "events": events,
        "wall_s": wall_s,
        "events_per_s": events / wall_s,
        "cpu_ms_per_event": cpu_ms / events,
    }


def single_rate(pid: int, url: str, key: str, events: list[dict]) -> dict:
    asyncio.run(post_feedback(url, key, events[:FEEDBACK_CLIENTS]))  # warm-up
    rest = events[FEEDBACK_CLIENTS:]
    return measured(pid, len(rest), lambda: asyncio.run(post_feedback(url, key, rest)))


def batch_rate(pid: int, url: str, key: str, events: list[dict], batches: int) -> dict:
    lines = [
        json.dumps({**event, "idempotency_key": uuid.uuid4().hex})
        for _ in range(batches + 1)
        for event in events[:BATCH_LINES]
    ]
    bodies = ["\n".join(lines[i : i + BATCH_LINES]) for i in range(0, len(lines), BATCH_LINES)]
    asyncio.run(post_batches(url, key, bodies[:1]))  # warm-up
    return measured(
        pid, batches * BATCH_LINES, lambda: asyncio.run(post_batches(url, key, bodies[1:]))
    )


def feedback_rate(server, model: Path, root: Path, bare: tuple[int, str], quick: bool) -> dict:
    """Rounds of (bare endpoint, POST /v1/feedback) back to back, then 1,000-line batches."""
    from loraloop.trainer.demo_model import build_random_adapter

    with common.admin(server) as client:
        key = common.tenant_key(client, "fb")
        common.register_live(
            client, "fb/ingest", build_random_adapter(model, root / f"fb-{server.port}", seed=5)
        )
    events = preference_feedback(
        "fb/ingest", user_messages(max(FEEDBACK_EVENTS[quick], BATCH_LINES), seed=3)
    )
    single, rounds = events[: FEEDBACK_EVENTS[quick]], []
    for _ in range(FEEDBACK_ROUNDS):
        rounds.append(
            {
                "bare": single_rate(*bare, key, single),
                "loraloop": single_rate(server.process.pid, server.url, key, single),
            }
        )
    batch = batch_rate(server.process.pid, server.url, key, events, BATCHES[quick])
    stored = httpx.get(
        f"{server.url}/v1/feedback/stats",
        params={"adapter": "fb/ingest"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).json()
    expected = FEEDBACK_ROUNDS * len(single) + (BATCHES[quick] + 1) * BATCH_LINES
    if stored["total"] != expected:  # every event has a key of its own: each stored once
        raise RuntimeError(f"{stored['total']} feedback rows stored, {expected} acknowledged")
    return {"rounds": rounds, "batch": batch, "stats": stored}


def start_trainer(model: Path, server, root: Path) -> tuple[subprocess.Popen, Path]:
    log = root / "trainer.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraloop.serve.cli",
            "trainer",
            "--model",
            str(model),
            "--data-dir",
            str(server.data_dir),
            "--poll-s",
            "0.2",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "LORALOOP_LOG_FORMAT": "text"},
    )
    return process, log


def utc(stamp: str) -> float:
    return datetime.fromisoformat(stamp).astimezone(timezone.utc).timestamp()


def last_train_step(log: Path, run_id: int) -> float | None:
    """Wall time of the trainer's last progress line for the run (its log is local time)."""
    stamps = [
        m.group(1)
        for line in log.read_text(errors="replace").splitlines()
        if (m := LOG_TIME.match(line)) and int(m.group(2)) == run_id
    ]
    if not stamps:
        return None
    return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


def loop_latency(server, model: Path, root: Path, timeout_s: float = 240) -> dict:
    from loraloop.trainer.demo_model import build_random_adapter

    adapter = "loop/assistant"
    with common.admin(server) as client:
        key = common.tenant_key(client, "loop")
        common.register_live(client, adapter, build_random_adapter(model, root / "loop", seed=1))
        client.set_policy(adapter, {**DEMO_POLICY, "min_pairs": FEEDBACK_PAIRS})
        trainer, log = start_trainer(model, server, root)
        try:
            time.sleep(5)  # the trainer is watching before the feedback lands
            lines = "\n".join(
                json.dumps(event)
                for event in preference_feedback(adapter, user_messages(FEEDBACK_PAIRS, seed=7))
            )
            httpx.post(
                f"{server.url}/v1/feedback/batch",
                content=lines,
                timeout=120,
                headers={"Authorization": f"Bearer {key}"},
            ).raise_for_status()
            acked = time.time()
            run = wait_for_run(client, adapter, timeout_s)
            serving = None
            if run["status"] == "promoted":
                while chat(server.url, adapter)[1] != f"{adapter}@{run['candidate_version']}":
                    time.sleep(0.05)
                serving = time.time()
            version = client.show_version(adapter, run["candidate_version"])
        finally:
            trainer.terminate()
            trainer.wait(timeout=60)
    return stages(run, version, acked, serving, last_train_step(log, run["id"]))


def wait_for_run(client, adapter: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = client.runs(adapter, limit=1)
        if runs and runs[0]["status"] not in ("queued", "running"):
            return runs[0]
        time.sleep(0.1)
    raise TimeoutError(f"no training run finished in {timeout_s:.0f} s; see trainer.log")


def stages(
    run: dict, version: dict, acked: float, serving: float | None, trained: float | None
) -> dict:
    started, finished = utc(run["started_at"]), utc(run["finished_at"])
    registered = utc(version["created_at"])
    result = {
        "status": run["status"],
        "reason": run["reason"],
        "claim_s": started - acked,
        "train_s": trained - started if trained else None,
        "evaluate_s": registered - trained if trained else None,
        "train_and_evaluate_s": registered - started,
        "register_and_promote_s": finished - registered,
        "warm_and_switch_s": serving - finished if serving else None,
        "total_s": (serving or finished) - acked,
    }
    return result


def run_sqlite_server(
    model: Path,
    root: Path,
    settings: dict,
    parts: set[str],
    quick: bool,
    bare: tuple[int, str] | None,
) -> dict:
    server = common.start_server(model, root, settings, "sqlite")
    results: dict = {}
    try:
        if "swap" in parts:
            with common.admin(server) as client:
                client.create_tenant("swap")
            results["swap"] = [
                swap_at_rank(server, model, root, rank, 3 if quick else 7) for rank in RANKS
            ]
            print(f"[swap] {results['swap']}", flush=True)
        if "loop" in parts:
            results["loop"] = loop_latency(server, model, root)
            print(f"[loop] {results['loop']}", flush=True)
        if "feedback" in parts:
            results["feedback"] = {"sqlite": feedback_rate(server, model, root, bare, quick)}
            print(f"[feedback] sqlite {results['feedback']['sqlite']}", flush=True)
    finally:
        server.stop()
    return results


def run_postgres_server(
    model: Path, root: Path, settings: dict, quick: bool, bare: tuple[int, str]
) -> dict:
    try:
        database = fresh_postgres_database()
        url = database.__enter__()
    except RuntimeError as exc:
        print(f"\n!!! PostgreSQL feedback benchmark NOT RUN: {exc}\n", flush=True)
        return {"error": str(exc)}
    try:
        server = common.start_server(model, root, settings, "pg", ["--database-url", url])
        try:
            return feedback_rate(server, model, root, bare, quick)
        finally:
            server.stop()
    finally:
        database.__exit__(None, None, None)


def swap_table(swaps: list) -> str:
    return common.markdown_table(
        [
            "rank",
            "promote call ms",
            "promote -> first v2 response ms",
            "loaded @v p50 ms",
            "cold @v first ms",
            "cold added ms",
            "loads in cold request",
            "engine load ms",
        ],
        [
            [
                s["rank"],
                s["promote_call_ms"],
                s["promote_to_first_v2_response_ms"],
                s["loaded_request_p50_ms"],
                s["cold_request_ms"],
                s["cold_added_ms"],
                s["engine_loads_during_cold_request"],
                s["engine_load_ms"],
            ]
            for s in swaps
        ],
    )


def feedback_rows(registry: str, result: dict) -> list[list]:
    """Means over rounds; ratios are taken within each round, then averaged."""
    if "error" in result:
        return [[registry, "POST /v1/feedback", "NOT RUN", "", "", ""]]
    rounds = result["rounds"]

    def mean(side: str, figure: str) -> float:
        return statistics.fmean(r[side][figure] for r in rounds)

    def within(figure: str) -> float:
        return statistics.fmean(
            common.ratio(r["loraloop"][figure], r["bare"][figure]) for r in rounds
        )

    bare_rate = mean("bare", "events_per_s")
    batch = result["batch"]
    return [
        [
            f"bare ({registry} run)",
            "POST (no storage)",
            mean("bare", "events_per_s"),
            mean("bare", "cpu_ms_per_event"),
            1.0,
            1.0,
        ],
        [
            registry,
            "POST /v1/feedback",
            mean("loraloop", "events_per_s"),
            mean("loraloop", "cpu_ms_per_event"),
            within("events_per_s"),
            within("cpu_ms_per_event"),
        ],
        [
            registry,
            f"POST /v1/feedback/batch ({BATCH_LINES} lines)",
            batch["events_per_s"],
            batch["cpu_ms_per_event"],
            common.ratio(batch["events_per_s"], bare_rate),
            common.ratio(batch["cpu_ms_per_event"], mean("bare", "cpu_ms_per_event")),
        ],
    ]


def feedback_table(sqlite: dict, pg: dict) -> str:
    return common.markdown_table(
        [
            "registry",
            "endpoint",
            "events/s",
            "server CPU ms/event",
            "events/s vs bare",
            "CPU/event vs bare",
        ],
        feedback_rows("SQLite", sqlite) + feedback_rows("PostgreSQL", pg),
    )


def loop_table(loop: dict) -> str:
    order = [
        "claim_s",
        "train_s",
        "evaluate_s",
        "train_and_evaluate_s",
        "register_and_promote_s",
        "warm_and_switch_s",
        "total_s",
    ]
    return common.markdown_table(
        ["stage", "seconds"],
        [[name, loop[name] if loop[name] is not None else "n/a"] for name in order]
        + [["run status", loop["status"]]],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(common.MODELS), default="tiny")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated, of: " + ", ".join(PARTS)
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and events")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts!r}")
    settings = common.engine_settings(args.model, **LORA_SETTINGS)
    with common.scratch_dir("control") as root, ExitStack() as stack:
        model = common.build_model(root, args.model)
        bare = stack.enter_context(bare_server(root)) if "feedback" in parts else None
        results = run_sqlite_server(model, root, settings, parts, args.quick, bare)
        if "feedback" in parts:
            results["feedback"]["postgresql"] = run_postgres_server(
                model, root, settings, args.quick, bare
            )
    tables = []
    if "swap" in results:
        tables.append(swap_table(results["swap"]))
    if "feedback" in results:
        tables.append(
            feedback_table(results["feedback"]["sqlite"], results["feedback"]["postgresql"])
        )
    if "loop" in results:
        tables.append(loop_table(results["loop"]))
    common.write_results(
        f"control-{args.model}",
        {
            "settings": {
                "model": args.model,
                "model_description": common.MODELS[args.model].description,
                "ranks": RANKS,
                "feedback_clients": FEEDBACK_CLIENTS,
                "feedback_rounds": FEEDBACK_ROUNDS,
                "batch_lines": BATCH_LINES,
                "batch_clients": BATCH_CLIENTS,
                "engine": settings,
                "parts": sorted(parts),
                "quick": args.quick,
            },
            **results,
        },
        tables,
    )
    error = results.get("feedback", {}).get("postgresql", {}).get("error")
    if error:
        sys.exit("the PostgreSQL feedback benchmark did not run: " + error)


if __name__ == "__main__":
    main()
