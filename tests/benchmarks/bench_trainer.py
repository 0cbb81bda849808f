"""The trainer as a workload: how fast a DPO run trains, how long its scoring takes, and how
its memory plan compares with the peak it measured, per base model and dtype.

Each (model, dtype) runs in a fresh process (so that one run's memory does not count in the
next's peak): load the base once (trainer/shared_base.py), train a first version on N marker
pairs with the default policy's memory settings, then score it the way the gate does
(held-out preference margins and KL from the base on the same shared base).

Per run: training tokens per second (prompt and both answers, every epoch), seconds to load,
train and score, the plan's estimate against the measured peak (CPU: the weights plus the
process's peak resident-set growth over training).

    python -m tests.benchmarks.bench_trainer [--models tiny,0.5b] [--dtypes float32,bfloat16]
                                             [--pairs 16] [--quick]

Not measured here: the judge and registration (bench_control's loop covers those on the
demo model), several processes, GPUs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .common import build_model, markdown_table, scratch_dir, write_results

GIB = 1 << 30


def one_run(model_dir: Path, dtype: str, pairs: int, out: Path) -> dict:
    """Runs in its own process: load, train, score; the figures as a dict."""
    import torch

    from loraloop.adapters.prompts import StoredPrompt
    from loraloop.adapters.training_policy import TrainingPolicy
    from loraloop.serve.cli.demo import DEMO_POLICY, MARKER, user_messages
    from loraloop.trainer.device import DTYPES, Placement
    from loraloop.trainer.dpo import train_dpo
    from loraloop.trainer.evaluate import Scorer
    from loraloop.trainer.pairs import PreferencePair
    from loraloop.trainer.rendering import encode_pair
    from loraloop.trainer.shared_base import SharedBase

    messages = user_messages(pairs + 8, seed=11)
    made = [PreferencePair(StoredPrompt.chat([("user", m)]), f"{MARKER} {m}", m) for m in messages]
    train, held_out = made[:pairs], made[pairs:]
    policy = TrainingPolicy.model_validate({**DEMO_POLICY, "epochs": 1, "min_steps": 1})
    started = time.monotonic()
    base = SharedBase(model_dir, Placement(torch.device("cpu"), DTYPES[dtype]))
    scorer = Scorer(base)
    loaded = time.monotonic()
    result = train_dpo(base, None, train, policy, out)
    trained = time.monotonic()
    scorer.preference(out, held_out)
    scorer.mean_token_kl(out, None, [pair.prompt for pair in held_out[:4]], max_new_tokens=8)
    scored = time.monotonic()
    encoded = [encode_pair(base.tokenizer, pair) for pair in train]
    tokens = sum(len(e.prompt) * 2 + len(e.chosen) + len(e.rejected) for e in encoded)
    return {
        "dtype": dtype,
        "pairs": pairs,
        "steps": result.steps,
        "load_s": loaded - started,
        "train_s": trained - loaded,
        "score_s": scored - trained,
        "train_tokens_per_s": tokens
        * result.steps
        * policy.batch_size
        / len(train)
        / (trained - loaded),
        "estimate_bytes": result.memory.estimate_bytes,
        "peak_bytes": result.memory.peak_bytes,
    }


def run_in_child(model_dir: Path, dtype: str, pairs: int, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "tests.benchmarks.bench_trainer",
        "--child",
        json.dumps([str(model_dir), dtype, pairs, str(out)]),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,0.5b")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="the demo model, 8 pairs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, dtype, pairs, out = json.loads(args.child)
        print(json.dumps(one_run(Path(model_dir), dtype, pairs, Path(out))))
        return
    models = ["tiny"] if args.quick else args.models.split(",")
    pairs = 8 if args.quick else args.pairs
    rows, results = [], []
    with scratch_dir("trainer") as root:
        for model in models:
            model_dir = build_model(root, model)
            for dtype in args.dtypes.split(","):
                figures = run_in_child(model_dir, dtype, pairs, root / f"{model}-{dtype}")
                figures["model"] = model
                results.append(figures)
                ratio = figures["estimate_bytes"] / figures["peak_bytes"]
                rows.append(
                    [
                        model,
                        dtype,
                        figures["steps"],
                        figures["train_tokens_per_s"],
                        figures["load_s"],
                        figures["train_s"],
                        figures["score_s"],
                        figures["estimate_bytes"] / GIB,
                        figures["peak_bytes"] / GIB,
                        ratio,
                    ]
                )
                print(f"[run] {model} {dtype}: {figures}", flush=True)
    table = markdown_table(
        [
            "model",
            "dtype",
            "steps",
            "train tokens/s",
            "load s",
            "train s",
            "score s",
            "plan GiB",
            "peak GiB",
            "plan / peak",
        ],
        rows,
    )
    write_results("trainer", {"pairs": pairs, "runs": results}, [table])


if __name__ == "__main__":
    main()
