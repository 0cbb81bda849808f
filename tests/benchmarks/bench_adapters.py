"""Serving throughput and latency against the number of distinct adapters in the traffic.

One `loraloop serve` process (vLLM, CPU build) with 32 adapters registered and live. C
concurrent streaming clients send a fixed set of chat requests (greedy, max_tokens=32) to
the base model, then to 1, 8 and 32 adapters spread uniformly, then to 32 adapters with
Zipf(1.1) popularity. Each run is compared with the base-model run of the same invocation.
"ours vs raw" drives the same base-model workload straight on vLLM's AsyncLLM, in a process
of its own, with the server's engine arguments and prompt tokenization.

    .venv/bin/python -m tests.benchmarks.bench_adapters [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from loraloop.serve.demo import user_messages

from . import common

CLIENTS, MAX_TOKENS, ADAPTERS, ZIPF_S = 8, 32, 32, 1.1
LORA_ARGS = ["--max-loras", "8", "--max-cpu-loras", "32"]


@dataclass
class Sample:
    ttft_s: float
    tpot_s: float | None  # None for a one-token answer
    tokens: int


def adapter_names(count: int) -> list[str]:
    return [f"t{i % 4}/a{i:02d}" for i in range(count)]


def workload(requests: int, targets: list[str], zipf: bool) -> list[tuple[str, str]]:
    """(model, user message) per request: targets uniformly (round-robin) or by Zipf rank."""
    rng = random.Random(0)
    messages = user_messages(requests, seed=11)
    if zipf:
        weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(targets))]
        models = rng.choices(targets, weights=weights, k=requests)
    else:
        models = [targets[i % len(targets)] for i in range(requests)]
    return list(zip(models, messages, strict=True))


def summarize(samples: list[Sample], wall_s: float) -> dict:
    ttft = [s.ttft_s * 1000 for s in samples]
    tpot = [s.tpot_s * 1000 for s in samples if s.tpot_s is not None]
    tokens = sum(s.tokens for s in samples)
    return {"requests": len(samples), "output_tokens": tokens, "wall_s": wall_s,
            "tokens_per_s": tokens / wall_s,
            "ttft_ms_p50": common.percentile(ttft, 50), "ttft_ms_p99": common.percentile(ttft, 99),
            "tpot_ms_p50": common.percentile(tpot, 50), "tpot_ms_p99": common.percentile(tpot, 99)}


async def drive(jobs: list, send) -> dict:
    """Run `send(job) -> Sample` over jobs with CLIENTS workers; summary of the whole run."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    samples: list[Sample] = []

    async def worker() -> None:
        while not queue.empty():
            samples.append(await send(queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return summarize(samples, time.perf_counter() - started)


def sample_of(started: float, first: float | None, last: float, tokens: int) -> Sample:
    first = first if first is not None else last
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return Sample(first - started, tpot, tokens)


async def chat_run(url: str, jobs: list[tuple[str, str]]) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=common.ADMIN_KEY, max_retries=0,
                                timeout=300)

    async def send(job: tuple[str, str]) -> Sample:
        model, message = job
        started, first, tokens = time.perf_counter(), None, 0
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": message}], stream=True,
            max_tokens=MAX_TOKENS, temperature=0, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return sample_of(started, first, time.perf_counter(), tokens)

    try:
        return await drive(jobs, send)
    finally:
        await client.close()


async def raw_engine_run(model: str, messages: list[str]) -> dict:
    """The base-model workload on AsyncLLM directly: no HTTP, no routing, no registry."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from loraloop.serve.prompts import PromptRenderer

    renderer = PromptRenderer.load(model, 1024)
    # The arguments serve/engine/vllm_engine.py builds from this benchmark's server flags.
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=model, max_model_len=1024, dtype="float32", enforce_eager=True,
        gpu_memory_utilization=0.9, kv_cache_memory_bytes=1 << 30, enable_lora=True,
        max_loras=8, max_cpu_loras=32, max_lora_rank=64, max_logprobs=20, seed=0,
        disable_log_stats=True))
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0,
                            output_kind=RequestOutputKind.DELTA)
    ids = iter(range(1 << 30))

    async def send(message: str) -> Sample:
        prompt = TokensPrompt(prompt_token_ids=renderer.chat([{"role": "user",
                                                               "content": message}]))
        started, first, tokens = time.perf_counter(), None, 0
        async for output in engine.generate(prompt, params, f"raw-{next(ids)}"):
            if output.outputs[0].token_ids and first is None:
                first = time.perf_counter()
            tokens += len(output.outputs[0].token_ids)
        return sample_of(started, first, time.perf_counter(), tokens)

    try:
        await drive(messages[:CLIENTS], send)  # warm-up, as the server's is warm
        return await drive(messages, send)
    finally:
        engine.shutdown()


def run_raw_engine(model: Path, requests: int, out: Path) -> dict:
    command = [sys.executable, "-m", "tests.benchmarks.bench_adapters", "--raw-worker",
               str(out), "--model", str(model), "--requests", str(requests)]
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=Path(__file__).parents[2])
    print(f"[raw] AsyncLLM run done in {time.monotonic() - started:.1f} s", flush=True)
    return json.loads(out.read_text())


def provision(server, model: Path, root: Path) -> None:
    from loraloop.serve.demo_model import build_random_adapter

    with common.admin(server) as client:
        for tenant in sorted({name.split("/")[0] for name in adapter_names(ADAPTERS)}):
            client.create_tenant(tenant)
        for seed, name in enumerate(adapter_names(ADAPTERS)):
            directory = build_random_adapter(model, root / name.replace("/", "__"), seed=seed)
            common.register_live(client, name, directory)


def serving_runs(server, requests: int) -> dict[str, dict]:
    plans = {"base": ([common.MODEL_NAME], False), "1 adapter": (adapter_names(1), False),
             "8 adapters": (adapter_names(8), False), "32 adapters": (adapter_names(32), False),
             "32 adapters, Zipf(1.1)": (adapter_names(32), True),
             # The base run again, last: how far two identical runs differ on this machine.
             "base, repeated last": ([common.MODEL_NAME], False)}
    # Warm-up: every target answers once before anything is measured.
    warm = [common.MODEL_NAME] * CLIENTS + adapter_names(ADAPTERS)
    asyncio.run(chat_run(server.url, workload(len(warm), warm, False)))
    runs = {}
    for label, (targets, zipf) in plans.items():
        runs[label] = asyncio.run(chat_run(server.url, workload(requests, targets, zipf)))
        print(f"[serve] {label}: {runs[label]['tokens_per_s']:.1f} tok/s", flush=True)
    return runs


def tables(runs: dict[str, dict], raw: dict) -> list[str]:
    base = runs["base"]
    rows = [[label, r["tokens_per_s"], common.ratio(r["tokens_per_s"], base["tokens_per_s"]),
             r["ttft_ms_p50"], r["ttft_ms_p99"], r["tpot_ms_p50"], r["tpot_ms_p99"],
             common.ratio(r["tpot_ms_p50"], base["tpot_ms_p50"])] for label, r in runs.items()]
    adapters = common.markdown_table(
        ["traffic", "output tok/s", "tok/s vs base", "TTFT p50 ms", "TTFT p99 ms",
         "TPOT p50 ms", "TPOT p99 ms", "TPOT p50 vs base"], rows)
    versus = [[name, r["tokens_per_s"], r["ttft_ms_p50"], r["ttft_ms_p99"], r["tpot_ms_p50"]]
              for name, r in (("loraloop (HTTP, streamed)", base), ("raw AsyncLLM", raw))]
    versus.append(["ratio ours/raw", common.ratio(base["tokens_per_s"], raw["tokens_per_s"]),
                   common.ratio(base["ttft_ms_p50"], raw["ttft_ms_p50"]),
                   common.ratio(base["ttft_ms_p99"], raw["ttft_ms_p99"]),
                   common.ratio(base["tpot_ms_p50"], raw["tpot_ms_p50"])])
    raw_table = common.markdown_table(
        ["base model, same workload", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
         "TPOT p50 ms"], versus)
    return [adapters, raw_table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 requests per run, not 96")
    parser.add_argument("--raw-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        messages = [m for _, m in workload(args.requests, [common.MODEL_NAME], False)]
        result = asyncio.run(raw_engine_run(args.model, messages))
        args.raw_worker.write_text(json.dumps(result))
        return
    requests = 32 if args.quick else 96
    with common.scratch_dir("adapters") as root:
        measure(root, requests, args.quick)


def measure(root: Path, requests: int, quick: bool) -> None:
    model = common.build_model(root)
    raw = run_raw_engine(model, requests, root / "raw.json")  # alone: the machine is shared
    server = common.start_server(model, root, LORA_ARGS, "adapters")
    try:
        provision(server, model, root)
        runs = serving_runs(server, requests)
    finally:
        server.stop()
    settings = {"clients": CLIENTS, "requests_per_run": requests, "max_tokens": MAX_TOKENS,
                "adapters_registered": ADAPTERS, "zipf_s": ZIPF_S, "server_flags": LORA_ARGS,
                "quick": quick}
    common.write_results("adapters", {"settings": settings, "runs": runs, "raw_engine": raw},
                         tables(runs, raw))


if __name__ == "__main__":
    main()
