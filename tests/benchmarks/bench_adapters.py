"""Serving throughput and latency against the number of adapters in the traffic, and engines.

One `loraloop serve` process (vLLM) with 128 random rank-8 adapters registered and live
serves the same chat workload (C concurrent streaming clients, greedy, max_tokens=32) to the
base model, to 1, 8, 32 and 128 adapters spread round-robin, and to 128 with Zipf(1.1)
popularity. The base-model and 8-adapter workloads also run on vLLM's AsyncLLM driven
in-process with the server's own engine arguments ("raw": no HTTP, no routing), and on a
`loraloop serve --engine reference` process (transformers + PEFT, one sequence at a time).

Every workload runs once per round, in an order shuffled per round; all engines stay up
for the whole run but only one works at a time. Ratios are taken within a round (against
the base model, or between engines) and reported as the mean over rounds with the lowest
and highest round, because this machine's speed drifts between minutes.

    .venv/bin/python -m tests.benchmarks.bench_adapters [--model tiny|0.5b] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from loraloop.serve.cli.demo import user_messages

from . import common

CLIENTS, MAX_TOKENS, ADAPTERS, ZIPF_S = 8, 32, 128, 1.1
LORA_SETTINGS = {"max_loras": 8, "max_cpu_loras": ADAPTERS, "max_lora_rank": 8}


@dataclass(frozen=True)
class Workload:
    engine: str  # "loraloop", "raw" (AsyncLLM in-process) or "reference"
    adapters: int  # distinct adapters in the traffic; 0 is the base model
    zipf: bool = False

    @property
    def traffic(self) -> str:
        if not self.adapters:
            return "base"
        plural = "s" if self.adapters > 1 else ""
        return f"{self.adapters} adapter{plural}" + (f", Zipf({ZIPF_S})" if self.zipf else "")

    @property
    def label(self) -> str:
        return f"{self.engine}: {self.traffic}"


WORKLOADS = [
    *(Workload("loraloop", n) for n in (0, 1, 8, 32, 128)),
    Workload("loraloop", 128, zipf=True),
    Workload("raw", 0),
    Workload("raw", 8),
    Workload("reference", 0),
    Workload("reference", 8),
]


@dataclass(frozen=True)
class Scale:
    requests: int  # per workload and round
    reference_requests: int  # the reference engine's share of them (it is much slower)
    rounds: int


# Sized so that `make bench` (both models and bench_control) stays under 15 minutes here.
SCALES = {
    ("tiny", False): Scale(32, 32, 3),
    ("tiny", True): Scale(16, 16, 2),
    ("0.5b", False): Scale(16, 4, 2),
    ("0.5b", True): Scale(8, 2, 2),
}


@dataclass
class Sample:
    ttft_s: float
    tpot_s: float | None  # None for a one-token answer
    tokens: int


def sample_of(started: float, first: float | None, last: float, tokens: int) -> Sample:
    first = first if first is not None else last
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return Sample(first - started, tpot, tokens)


def adapter_names(count: int) -> list[str]:
    return [f"t{i % 4}/a{i:03d}" for i in range(count)]


def requests_for(workload: Workload, count: int, round_index: int) -> list[tuple[str, str]]:
    """(model, user message) per request. Messages are new every round, so no engine's
    prefix cache holds them from an earlier round, and the same for every workload in it."""
    messages = user_messages(count, seed=1000 + round_index)
    if not workload.adapters:
        return [(common.MODEL_NAME, message) for message in messages]
    targets = adapter_names(workload.adapters)
    if workload.zipf:
        weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(targets))]
        models = random.Random(round_index).choices(targets, weights=weights, k=count)
    else:
        models = [targets[i % len(targets)] for i in range(count)]
    return list(zip(models, messages, strict=True))


async def drive(jobs: list, send: Callable[..., Awaitable[Sample]]) -> tuple[list[Sample], float]:
    """Run `send(job)` over the jobs with CLIENTS workers: (samples, wall seconds)."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    samples: list[Sample] = []

    async def worker() -> None:
        while not queue.empty():
            samples.append(await send(queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return samples, time.perf_counter() - started


class HttpTarget:
    """A running server, driven with streamed chat completions.

    The client is plain httpx with a minimal SSE reader, not the `openai` SDK: the clients
    share the machine with the server, and the SDK's per-chunk object building would be
    measured as if it were the server's time.
    """

    def __init__(self, server) -> None:
        self.server = server
        self.http = httpx.AsyncClient(
            base_url=server.url,
            timeout=600,
            headers={"Authorization": f"Bearer {common.ADMIN_KEY}"},
            limits=httpx.Limits(max_connections=CLIENTS),
        )

    async def send(self, job: tuple[str, str], max_tokens: int = MAX_TOKENS) -> Sample:
        model, message = job
        started, first, tokens = time.perf_counter(), None, 0
        body = {
            "model": model,
            "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(
                    f"{model}: {response.status_code} {(await response.aread())[:300]!r}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if (
                    first is None
                    and chunk["choices"]
                    and chunk["choices"][0]["delta"].get("content")
                ):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return sample_of(started, first, time.perf_counter(), tokens)

    async def close(self) -> None:
        await self.http.aclose()


class RawTarget:
    """vLLM's AsyncLLM in this process, built by the server's own engine factory from the
    same settings: what the server adds is everything outside `engine.generate`."""

    def __init__(self, model: Path, settings: dict, adapter_dirs: dict[str, Path]) -> None:
        self.model, self.settings, self.adapter_dirs = model, settings, adapter_dirs
        self.ids = iter(range(1 << 62))

    async def start(self) -> None:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        from loraloop.adapters.prompts import PromptRenderer
        from loraloop.serve.engine.factory import create_engine
        from loraloop.serve.settings import ServeSettings

        started = time.monotonic()
        # auth=False: these settings only build the engine; nothing here listens.
        self.wrapper = create_engine(
            ServeSettings(model=str(self.model), auth=False, **self.settings)
        )
        await self.wrapper.start()
        self.engine = self.wrapper.engine
        self.renderer = PromptRenderer.load(str(self.model), self.settings["max_model_len"])
        self.params = {
            tokens: SamplingParams(
                max_tokens=tokens, temperature=0, output_kind=RequestOutputKind.DELTA
            )
            for tokens in (1, MAX_TOKENS)
        }
        # Engine LoRA ids as the server's are: one positive integer per adapter.
        self.loras = {
            name: LoRARequest(name, index + 1, str(path))
            for index, (name, path) in enumerate(sorted(self.adapter_dirs.items()))
        }
        print(f"[raw] AsyncLLM ready in {time.monotonic() - started:.1f} s", flush=True)

    async def send(self, job: tuple[str, str], max_tokens: int = MAX_TOKENS) -> Sample:
        from vllm.inputs import TokensPrompt

        model, message = job
        prompt = TokensPrompt(
            prompt_token_ids=self.renderer.chat([{"role": "user", "content": message}])
        )
        started, first, tokens = time.perf_counter(), None, 0
        async for output in self.engine.generate(
            prompt,
            self.params[max_tokens],
            f"raw-{next(self.ids)}",
            lora_request=self.loras.get(model),
        ):
            if output.outputs[0].token_ids and first is None:
                first = time.perf_counter()
            tokens += len(output.outputs[0].token_ids)
        return sample_of(started, first, time.perf_counter(), tokens)

    async def close(self) -> None:
        await self.wrapper.shutdown()


def summarize(samples: list[Sample], wall_s: float, busy: dict[str, float]) -> dict:
    ttft = [s.ttft_s * 1000 for s in samples]
    tpot = [s.tpot_s * 1000 for s in samples if s.tpot_s is not None]
    tokens = sum(s.tokens for s in samples)
    return {
        "requests": len(samples),
        "output_tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s,
        "busy": busy,
        "ttft_ms_p50": common.percentile(ttft, 50),
        "ttft_ms_p99": common.percentile(ttft, 99),
        "tpot_ms_p50": common.percentile(tpot, 50),
        "tpot_ms_p99": common.percentile(tpot, 99),
    }


async def run_once(target, jobs: list, meter: common.CpuMeter) -> dict:
    before = meter.read()
    samples, wall_s = await drive(jobs, target.send)
    return summarize(samples, wall_s, meter.busy(before, wall_s))


async def measure_rounds(
    targets: dict, meter: common.CpuMeter, scale: Scale
) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {w.label: [] for w in WORKLOADS}
    for round_index in range(scale.rounds):
        order = random.Random(round_index).sample(WORKLOADS, len(WORKLOADS))
        for workload in order:
            count = scale.reference_requests if workload.engine == "reference" else scale.requests
            jobs = requests_for(workload, count, round_index)
            result = await run_once(targets[workload.engine], jobs, meter)
            runs[workload.label].append(result)
            print(
                f"[round {round_index + 1}/{scale.rounds}] {workload.label}: "
                f"{result['tokens_per_s']:.1f} tok/s, TPOT p50 {result['tpot_ms_p50']:.1f} ms, "
                "busy: "
                + ", ".join(f"{name} {share:.0%}" for name, share in result["busy"].items()),
                flush=True,
            )
    return runs


async def warm_up(targets: dict) -> None:
    """Every target answers once, every adapter included, before anything is measured: one
    token each, enough to load the adapter and touch every code path."""
    for workload in WORKLOADS:
        if workload.zipf:
            continue
        jobs = [
            (model, "hello?")
            for model, _ in requests_for(workload, max(workload.adapters, CLIENTS), round_index=-1)
        ]
        if workload.engine == "reference":
            jobs = jobs[:CLIENTS]
        await drive(jobs, functools.partial(targets[workload.engine].send, max_tokens=1))


def provision(server, names: list[str], adapter_dirs: dict[str, Path]) -> None:
    started = time.monotonic()
    with common.admin(server) as client:
        for tenant in sorted({name.split("/")[0] for name in names}):
            client.create_tenant(tenant)
        for name in names:
            common.register_live(client, name, adapter_dirs[name])
    print(
        f"[provision] {len(names)} adapters registered and live in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )


def build_adapters(model: Path, root: Path) -> dict[str, Path]:
    from loraloop.trainer.demo_model import build_random_adapters

    started = time.monotonic()
    dirs = {name: root / "adapters" / name.replace("/", "__") for name in adapter_names(ADAPTERS)}
    build_random_adapters(model, {path: seed for seed, path in enumerate(dirs.values())})
    print(f"[adapters] {ADAPTERS} generated in {time.monotonic() - started:.1f} s", flush=True)
    return dirs


async def measure(model_key: str, root: Path, scale: Scale) -> dict[str, list[dict]]:
    model = common.build_model(root, model_key)
    adapter_dirs = build_adapters(model, root)
    settings = common.engine_settings(model_key, **LORA_SETTINGS)
    servers = []
    try:
        servers.append(ours := common.start_server(model, root, settings, "loraloop"))
        # One thread for the reference engine, as vLLM's CPU build binds its engine to one
        # core: both engines compute on one core each.
        servers.append(
            reference := common.start_server(
                model,
                root,
                settings,
                "reference",
                ["--engine", "reference"],
                env={"OMP_NUM_THREADS": "1"},
            )
        )
        provision(ours, adapter_names(ADAPTERS), adapter_dirs)
        provision(reference, adapter_names(8), adapter_dirs)
        raw = RawTarget(model, settings, adapter_dirs)
        await raw.start()
        targets = {"loraloop": HttpTarget(ours), "reference": HttpTarget(reference), "raw": raw}
        try:
            await warm_up(targets)
            return await measure_rounds(targets, cpu_meter(ours, reference), scale)
        finally:
            for target in targets.values():
                await target.close()
    finally:
        for server in servers:
            server.stop()


def cpu_meter(ours, reference) -> common.CpuMeter:
    """This process runs the clients and the raw AsyncLLM's front end; its children are the
    servers and the raw engine's processes (vLLM's scheduler and its worker)."""
    ours_engine = common.descendants(ours.process.pid)
    servers = {
        ours.process.pid,
        reference.process.pid,
        *ours_engine,
        *common.descendants(reference.process.pid),
    }
    return common.CpuMeter(
        {
            "clients": [os.getpid()],
            "loraloop API": [ours.process.pid],
            "loraloop engine": ours_engine,
            "reference": [reference.process.pid, *common.descendants(reference.process.pid)],
            "raw engine": [pid for pid in common.descendants(os.getpid()) if pid not in servers],
        }
    )


def round_ratios(runs: list[dict], baselines: list[dict], key: str) -> tuple:
    """spread() of run / baseline, each pair from the same round."""
    return common.spread(
        [
            common.ratio(run[key], baseline[key])
            for run, baseline in zip(runs, baselines, strict=True)
        ]
    )


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per workload: means over rounds, and ratios taken within each round."""
    base = runs[Workload("loraloop", 0).label]
    summary = {}
    for workload in WORKLOADS:
        rounds = runs[workload.label]
        entry = {
            key: sum(r[key] for r in rounds) / len(rounds)
            for key in ("tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99")
        }
        if workload.engine == "loraloop":
            entry["tokens_per_s_vs_base"] = round_ratios(rounds, base, "tokens_per_s")
            entry["tpot_p50_vs_base"] = round_ratios(rounds, base, "tpot_ms_p50")
        else:
            ours = runs[Workload("loraloop", workload.adapters).label]
            entry["ours_over_this_tokens_per_s"] = round_ratios(ours, rounds, "tokens_per_s")
            entry["ours_over_this_ttft_p50"] = round_ratios(ours, rounds, "ttft_ms_p50")
            entry["ours_over_this_tpot_p50"] = round_ratios(ours, rounds, "tpot_ms_p50")
        entry["busy"] = {
            name: sum(r["busy"][name] for r in rounds) / len(rounds) for name in rounds[0]["busy"]
        }
        summary[workload.label] = entry
    return summary


def tables(summary: dict[str, dict]) -> list[str]:
    traffic = common.markdown_table(
        [
            "traffic (loraloop)",
            "output tok/s",
            "tok/s vs base",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "TPOT p50 ms",
            "TPOT p99 ms",
            "TPOT p50 vs base",
            "busy: clients",
            "API",
            "engine",
        ],
        [
            [
                w.traffic,
                s["tokens_per_s"],
                common.format_spread(*s["tokens_per_s_vs_base"]),
                s["ttft_ms_p50"],
                s["ttft_ms_p99"],
                s["tpot_ms_p50"],
                s["tpot_ms_p99"],
                common.format_spread(*s["tpot_p50_vs_base"]),
                *(
                    f"{s['busy'][name]:.0%}"
                    for name in ("clients", "loraloop API", "loraloop engine")
                ),
            ]
            for w in WORKLOADS
            if w.engine == "loraloop"
            for s in [summary[w.label]]
        ],
    )
    engines = common.markdown_table(
        [
            "engine",
            "traffic",
            "output tok/s",
            "TTFT p50 ms",
            "TPOT p50 ms",
            "loraloop / this: tok/s",
            "TTFT p50",
            "TPOT p50",
        ],
        [
            [
                w.engine,
                w.traffic,
                s["tokens_per_s"],
                s["ttft_ms_p50"],
                s["tpot_ms_p50"],
                *(
                    common.format_spread(*s[f"ours_over_this_{key}"])
                    for key in ("tokens_per_s", "ttft_p50", "tpot_p50")
                ),
            ]
            for w in WORKLOADS
            if w.engine != "loraloop"
            for s in [summary[w.label]]
        ],
    )
    return [traffic, engines]


def plot(summary: dict[str, dict], path: Path, title: str) -> None:
    """Throughput and TPOT against the number of adapters, with the base model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uniform = [w for w in WORKLOADS if w.engine == "loraloop" and w.adapters and not w.zipf]
    zipf = [w for w in WORKLOADS if w.engine == "loraloop" and w.zipf]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in (
        (left, "tokens_per_s_vs_base", "output tok/s vs base model"),
        (right, "tpot_p50_vs_base", "TPOT p50 vs base model"),
    ):
        for group, marker, name in ((uniform, "o-", "uniform"), (zipf, "s", f"Zipf({ZIPF_S})")):
            mean, low, high = zip(*(summary[w.label][key] for w in group), strict=True)
            errors = [
                [m - lo for m, lo in zip(mean, low, strict=True)],
                [hi - m for m, hi in zip(mean, high, strict=True)],
            ]
            axis.errorbar(
                [w.adapters for w in group], mean, yerr=errors, fmt=marker, capsize=4, label=name
            )
        axis.axhline(1.0, color="grey", linestyle="--", label="base model")
        axis.set_xscale("log", base=2)
        axis.set_xticks([w.adapters for w in uniform], [str(w.adapters) for w in uniform])
        axis.set_ylim(bottom=0)
        axis.set_xlabel("distinct adapters in the traffic")
        axis.set_ylabel(label)
        axis.legend()
    figure.suptitle(title + " (mean over rounds; bars: lowest to highest round)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(common.MODELS), default="tiny")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401 - plotted at the end: fail before minutes of measuring
    except ImportError:
        sys.exit("the plots need matplotlib: pip install -e '.[bench]' (make bench does)")
    scale = SCALES[args.model, args.quick]
    with common.scratch_dir(f"adapters-{args.model}") as root:
        runs = asyncio.run(measure(args.model, root, scale))
    summary = aggregate(runs)
    name = f"adapters-{args.model}"
    settings = {
        "model": args.model,
        "model_description": common.MODELS[args.model].description,
        "clients": CLIENTS,
        "max_tokens": MAX_TOKENS,
        "adapters_registered": ADAPTERS,
        "adapter_rank": 8,
        "zipf_s": ZIPF_S,
        "quick": args.quick,
        **asdict(scale),
        "engine": common.engine_settings(args.model, **LORA_SETTINGS),
    }
    path = common.write_results(
        name, {"settings": settings, "summary": summary, "runs": runs}, tables(summary)
    )
    plot(
        summary,
        path.with_suffix(".png"),
        f"{args.model} model, {CLIENTS} clients, {ADAPTERS} adapters registered",
    )
    print(f"plot: {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
