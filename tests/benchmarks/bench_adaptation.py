"""Adaptation quality: does learning without labels make adapters better, by a hidden oracle?

Simulated tenants (tests/oracle_tasks.py) each want something of answers that code can check:
short answers, answers naming the question's topic, answers that avoid some words. Nobody
posts feedback. A Python judge that agrees with the task's oracle 80% of the time scores
answers, and a real server and trainer run rounds of the loop. After every round the live
version answers held-out questions (8 answers each at temperature 1) and the oracle scores
them.

Arms, at an equal budget of pairs (the same questions and samples per round):
- online: each round samples the live version afresh through the server (the product's
  on-policy sampling);
- offline: every round's answers were sampled from version 1 before the first round, judged
  by the same judge and posted as score feedback, a round's share at a time;
- online + search: online, with the policy's automatic hyperparameter search on;
- defaults: online with every setting of the training policy at its default but the judge,
  the prompts to sample and `enabled` (off: runs start only when this benchmark queues them),
  so its pairs' budget is the default sampling's, not the other arms'.

Per round and arm: the live version's mean oracle reward on held-out questions with a 95%
interval (questions as clusters), its win rate against version 1 on the same questions and
seeds (oracle wins over decided pairs), its KL from the base model on golden prompts (the
gate's figure for that version), the run's outcome, and the round's time.

    python -m tests.benchmarks.bench_adaptation [--rounds 4] [--tasks short,avoid]
        [--arms online,defaults] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.trainer.demo_model import build_fresh_adapter

from .. import oracle_tasks
from ..oracle_tasks import TASKS, Task, questions
from . import common
from .common import ADMIN_KEY

ROUNDS = 4
SAMPLED_QUESTIONS, SAMPLES = 64, 4  # per round: the pairs' budget, the same for every arm
HELD_OUT_QUESTIONS, HELD_OUT_ANSWERS = 24, 8
MAX_TOKENS = 32
TRAIN_QUESTIONS = questions(SAMPLED_QUESTIONS, seed=101)
GOLDEN = questions(8, seed=102, unlike=frozenset(TRAIN_QUESTIONS))
HELD_OUT = questions(
    HELD_OUT_QUESTIONS, seed=103, unlike=frozenset(TRAIN_QUESTIONS) | frozenset(GOLDEN)
)
GOALS = {"gain_over_v1": 0.3, "tasks_meeting_gain": 2}
RUN_TIMEOUT_S = 900
LORA_SETTINGS = {"max_lora_rank": 64, "max_loras": 8, "max_cpu_loras": 32}
SEARCH = {"trials": 4, "max_seconds": 240, "learning_rate": (2e-3, 5e-2), "epochs": (1, 4)}


@dataclass(frozen=True)
class Arm:
    name: str
    online: bool
    search: bool
    defaults: bool = False  # the policy's defaults, whatever this benchmark would set


ARMS = (
    Arm("online", True, False),
    Arm("offline", False, False),
    Arm("online+search", True, True),
    Arm("defaults", True, False, defaults=True),
)


def policy(task: Task, arm: Arm) -> dict:
    judge = {"kind": "python", "target": task.judge_target}
    if arm.defaults:
        return {"enabled": False, "judge": judge, "sampling": {"prompts": TRAIN_QUESTIONS}}
    settings = {
        # Runs start only when this benchmark queues them, one per round.
        "enabled": False,
        "min_pairs": 4,
        "max_wait_s": 0,
        "score_gap": 0.5,
        "judge": judge,
        "golden_prompts": GOLDEN,
        "learning_rate": 2e-2,
        "epochs": 3,
        "batch_size": 8,
        # A judge that errs one time in five makes noisy pairs: half of them are held out,
        # the gate asks for one-sided 95% rather than 99%, compares more answers per
        # held-out prompt, and promotes on a judged win without an accuracy margin.
        "held_out_fraction": 0.5,
        "gate": {
            "confidence_z": 1.64,
            "judged_samples": 4,
            "min_accuracy": 0.5,
            "promote_margin": 0.0,
        },
    }
    if arm.online:
        settings["sampling"] = {
            "prompts": TRAIN_QUESTIONS,
            "recorded": False,
            "max_prompts": SAMPLED_QUESTIONS,
            "samples": SAMPLES,
            "max_tokens": MAX_TOKENS,
        }
    if arm.search:
        settings["search"] = SEARCH
    return settings


@dataclass
class Tenant:
    task: Task
    arm: Arm
    adapter: str
    key: str
    offline_rounds: list[list[dict]] = field(default_factory=list)  # feedback lines per round
    rows: list[dict] = field(default_factory=list)  # one per round, round 0 = version 1
    v1_answers: list[list[str]] = field(default_factory=list)


def client_for(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=2, timeout=300)


def answers(
    client: openai.OpenAI, model: str, asked: list[str], count: int, seed: int
) -> list[list[str]]:
    """`count` answers to each question at temperature 1, seeded by (seed, the question)."""
    replies = []
    for index, question in enumerate(asked):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            n=count,
            temperature=1.0,
            max_tokens=MAX_TOKENS,
            seed=seed * 10_007 + index,
        )
        replies.append([choice.message.content or "" for choice in reply.choices])
    return replies


def oracle_figures(task: Task, live: list[list[str]], first: list[list[str]]) -> dict:
    """Mean oracle reward with a 95% interval over questions, the win rate against version
    1's answers to the same questions with the same seeds, and the answers' mean length in
    words (a judge can be won by answering longer: the length goes next to the reward)."""
    rewards = [[task.oracle(q, a) for a in row] for q, row in zip(HELD_OUT, live, strict=True)]
    per_question = [statistics.fmean(row) for row in rewards]
    mean = statistics.fmean(per_question)
    half = 1.96 * statistics.stdev(per_question) / math.sqrt(len(per_question))
    wins = losses = 0
    for question, ours, theirs in zip(HELD_OUT, live, first, strict=True):
        for our, their in zip(ours, theirs, strict=True):
            delta = task.oracle(question, our) - task.oracle(question, their)
            wins, losses = wins + (delta > 0), losses + (delta < 0)
    return {
        "reward": mean,
        "reward_low": mean - half,
        "reward_high": mean + half,
        "win_rate_vs_v1": wins / (wins + losses) if wins + losses else None,
        "decided_vs_v1": wins + losses,
        "mean_words": statistics.fmean(len(a.split()) for row in live for a in row),
    }


def judged_lines(task: Task, adapter: str, sampled: list[list[str]]) -> list[dict]:
    """Score feedback for version 1's answers, as the trainer's sampling would store it."""
    judge = getattr(oracle_tasks, task.judge_target.split(":")[1])
    lines = []
    for question, row in zip(TRAIN_QUESTIONS, sampled, strict=True):
        prompt = StoredPrompt.chat([("user", question)])
        for answer in row:
            lines.append(
                {
                    "adapter": adapter,
                    "messages": [{"role": "user", "content": question}],
                    "completion": answer,
                    "score": judge(prompt.to_json(), answer),
                    "judge": f"python:{task.judge_target}",
                }
            )
    return lines


def set_up(
    server, model: Path, root: Path, tasks: list[str], arms: list[Arm], rounds: int
) -> list[Tenant]:
    v1 = build_fresh_adapter(model, root / "v1", seed=3)  # answers as the base
    tenants = []
    with common.admin(server) as admin:
        for name in tasks:
            task = TASKS[name]
            tenant = name.replace("_", "-")
            key = common.tenant_key(admin, tenant)
            for arm in arms:
                adapter = f"{tenant}/{arm.name.replace('+', '-')}"
                common.register_live(admin, adapter, v1)
                admin.set_policy(adapter, policy(task, arm))
                tenants.append(Tenant(task, arm, adapter, key))
    for tenant in tenants:
        client = client_for(server, tenant.key)
        tenant.v1_answers = answers(
            client, f"{tenant.adapter}@1", HELD_OUT, HELD_OUT_ANSWERS, seed=0
        )
        tenant.rows.append(
            {
                "round": 0,
                "version": 1,
                "status": "version 1",
                "seconds": 0.0,
                "kl_from_base": 0.0,
                "pairs": 0,
                **oracle_figures(tenant.task, tenant.v1_answers, tenant.v1_answers),
            }
        )
        if not tenant.arm.online:  # every round's answers now, all from version 1
            tenant.offline_rounds = [
                judged_lines(
                    tenant.task,
                    tenant.adapter,
                    answers(client, f"{tenant.adapter}@1", TRAIN_QUESTIONS, SAMPLES, seed=1000 + r),
                )
                for r in range(rounds)
            ]
    return tenants


def play_round(server, tenant: Tenant, number: int) -> None:
    started = time.monotonic()
    if not tenant.arm.online:
        body = "\n".join(json.dumps(line) for line in tenant.offline_rounds[number - 1])
        httpx.post(
            f"{server.url}/v1/feedback/batch",
            content=body,
            timeout=120,
            headers={"Authorization": f"Bearer {tenant.key}"},
        ).raise_for_status()
    with common.admin(server) as admin:
        queued = admin.queue_run(tenant.adapter)["id"]
        run = wait_for_run(admin, tenant.adapter, queued)
        live = admin.show_adapter(tenant.adapter)["live_version"]
        version = admin.show_version(tenant.adapter, live)
    seconds = time.monotonic() - started
    live_answers = answers(
        client_for(server, tenant.key), tenant.adapter, HELD_OUT, HELD_OUT_ANSWERS, seed=0
    )
    tenant.rows.append(
        {
            "round": number,
            "version": live,
            "status": run["status"],
            "seconds": seconds,
            "pairs": run["pairs"] or 0,
            "reason": run["reason"],
            "kl_from_base": version["metrics"].get("kl_from_base", 0.0),
            **{
                name: (run["metrics"] or {}).get(name)
                for name in (
                    "judged_win_rate",
                    "search_trials",
                    "answers_judged",
                    "pairs_made",
                    "pairs_replayed",
                    "train_steps",
                    "heldout_pairs",
                    "judged_comparisons",
                )
            },
            **oracle_figures(tenant.task, live_answers, tenant.v1_answers),
        }
    )
    row = tenant.rows[-1]
    print(
        f"[{tenant.adapter}] round {number}: {run['status']} ({row['pairs']} pairs), live "
        f"v{live}, oracle reward {row['reward']:.3f} [{row['reward_low']:.3f}, "
        f"{row['reward_high']:.3f}], {row['mean_words']:.1f} words, {seconds:.0f} s",
        flush=True,
    )


def wait_for_run(admin, adapter: str, run_id: int) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = next((r for r in admin.runs(adapter, limit=5) if r["id"] == run_id), None)
        if run and run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} of {adapter} did not finish in {RUN_TIMEOUT_S} s")


def start_trainer(model: Path, server, root: Path) -> subprocess.Popen:
    log = root / "trainer.log"
    # The repository root is the working directory, so the policies' python judges
    # (tests.oracle_tasks) import in the trainer as they would from an operator's package.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraloop.trainer",
            "--model",
            str(model),
            "--data-dir",
            str(server.data_dir),
            "--poll-s",
            "0.2",
            "--server-url",
            server.url,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "LORALOOP_ADMIN_KEY": ADMIN_KEY, "LORALOOP_LOG_FORMAT": "text"},
    )


def goals(tenants: list[Tenant], max_kl: float) -> dict:
    """Per arm, each task's gain over version 1 and how many tasks met the goal; online
    against offline where both ran; false promotions (a promoted round whose reward is below
    the interval of the round before); the worst KL from the base."""
    by = {(t.task.name, t.arm.name): t for t in tenants}
    tasks = sorted({t.task.name for t in tenants})
    arms = sorted({t.arm.name for t in tenants})
    gains = {
        arm: {
            task: by[task, arm].rows[-1]["reward"] - by[task, arm].rows[0]["reward"]
            for task in tasks
        }
        for arm in arms
    }
    online_vs_offline = {
        task: by[task, "online"].rows[-1]["reward"] - by[task, "offline"].rows[-1]["reward"]
        for task in tasks
        if {"online", "offline"} <= set(arms)
    }
    false_promotions = [
        f"{t.adapter} round {now['round']}"
        for t in tenants
        for before, now in itertools.pairwise(t.rows)
        if now["status"] == "promoted" and now["reward"] < before["reward_low"]
    ]
    worst_kl = max(row["kl_from_base"] for t in tenants for row in t.rows)
    meeting = {
        arm: sum(gain >= GOALS["gain_over_v1"] for gain in by_task.values())
        for arm, by_task in gains.items()
    }
    return {
        "gain_over_v1": gains,
        "tasks_meeting_gain": meeting,
        "online_minus_offline": online_vs_offline,
        "false_promotions": false_promotions,
        "worst_kl_from_base": worst_kl,
        "max_kl_from_base": max_kl,
        "met": {
            "online_at_least_offline": all(d >= 0 for d in online_vs_offline.values()),
            "gain": {arm: count >= GOALS["tasks_meeting_gain"] for arm, count in meeting.items()},
            "no_false_promotion": not false_promotions,
            "kl": worst_kl <= max_kl,
        },
    }


def rounds_table(tenants: list[Tenant]) -> str:
    lines = [
        "| task | arm | round | live | outcome | pairs | oracle reward [95% CI] | "
        "mean words | win rate vs v1 | KL from base | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tenants:
        for row in t.rows:
            lines.append(
                f"| {t.task.name} | {t.arm.name} | {row['round']} | v{row['version']} | "
                f"{row['status']} | {row['pairs']} | {row['reward']:.3f} "
                f"[{row['reward_low']:.3f}, {row['reward_high']:.3f}] | "
                f"{row['mean_words']:.1f} | "
                f"{_rate(row['win_rate_vs_v1'])} ({row['decided_vs_v1']}) | "
                f"{row['kl_from_base']:.3f} | {row['seconds']:.0f} |"
            )
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(tenants: list[Tenant], met: dict) -> str:
    lines = [
        "| task | arm | v1 reward | last reward | gain | promotions | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tenants:
        first, last = t.rows[0], t.rows[-1]
        promoted = sum(row["status"] == "promoted" for row in t.rows)
        lines.append(
            f"| {t.task.name} | {t.arm.name} | {first['reward']:.3f} | "
            f"{last['reward']:.3f} | {last['reward'] - first['reward']:+.3f} | "
            f"{promoted} of {len(t.rows) - 1} | "
            f"{sum(row['seconds'] for row in t.rows):.0f} |"
        )
    gains = "; ".join(
        f"{arm}: "
        + ", ".join(f"{task} {gain:+.3f}" for task, gain in by_task.items())
        + f" ({'met' if met['met']['gain'][arm] else 'missed'})"
        for arm, by_task in met["gain_over_v1"].items()
    )
    versus = ", ".join(f"{task} {d:+.3f}" for task, d in met["online_minus_offline"].items())
    lines += [
        "",
        f"Goals: gain over version 1 >= {GOALS['gain_over_v1']} on at least "
        f"{GOALS['tasks_meeting_gain']} tasks: {gains}; online at least offline: "
        f"{versus or '-'} "
        f"({'met' if met['met']['online_at_least_offline'] else 'missed'}); "
        f"false promotions: {', '.join(met['false_promotions']) or 'none'}; "
        f"KL from base at most {met['max_kl_from_base']}: worst "
        f"{met['worst_kl_from_base']:.3f} ({'met' if met['met']['kl'] else 'missed'}).",
    ]
    return "\n".join(lines)


def plot(tenants: list[Tenant], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t.task.name for t in tenants})
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for t in (t for t in tenants if t.task.name == task):
            rounds = [row["round"] for row in t.rows]
            axis.errorbar(
                rounds,
                [row["reward"] for row in t.rows],
                capsize=3,
                marker="o",
                yerr=[
                    [row["reward"] - row["reward_low"] for row in t.rows],
                    [row["reward_high"] - row["reward"] for row in t.rows],
                ],
                label=t.arm.name,
            )
        axis.set_title(f"{task}: {TASKS[task].wants}", fontsize=9)
        axis.set_xlabel("round (0: version 1)")
        axis.set_ylabel("held-out oracle reward")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help="comma-separated, of: " + ", ".join(TASKS)
    )
    parser.add_argument(
        "--arms",
        default=",".join(arm.name for arm in ARMS),
        help="comma-separated, of: " + ", ".join(arm.name for arm in ARMS),
    )
    parser.add_argument(
        "--quick", action="store_true", help="two rounds of the first task: checks the script"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tasks = 2, next(iter(TASKS))
    tasks = args.tasks.split(",")
    if not tasks or set(tasks) - set(TASKS):
        parser.error(f"--tasks takes {', '.join(TASKS)}; got {args.tasks!r}")
    arms = [arm for arm in ARMS if arm.name in args.arms.split(",")]
    if not arms or set(args.arms.split(",")) - {arm.name for arm in arms}:
        parser.error(f"--arms takes {', '.join(arm.name for arm in ARMS)}; got {args.arms!r}")
    settings = common.engine_settings("tiny", **LORA_SETTINGS)
    with common.scratch_dir("adaptation") as root:
        model = common.build_model(root, "tiny")
        server = common.start_server(model, root, settings, "server")
        trainer = start_trainer(model, server, root)
        try:
            tenants = set_up(server, model, root, tasks, arms, args.rounds)
            started = time.monotonic()
            for number in range(1, args.rounds + 1):
                for tenant in tenants:
                    play_round(server, tenant, number)
            wall_s = time.monotonic() - started
        finally:
            trainer.terminate()
            trainer.wait(timeout=60)
            server.stop()
    met = goals(tenants, TrainingPolicy().gate.max_kl_from_base)
    results = {
        "settings": {
            "rounds": args.rounds,
            "tasks": tasks,
            "sampled_questions": SAMPLED_QUESTIONS,
            "samples": SAMPLES,
            "held_out_questions": HELD_OUT_QUESTIONS,
            "held_out_answers": HELD_OUT_ANSWERS,
            "search": SEARCH,
            "policies": {t.adapter: policy(t.task, t.arm) for t in tenants},
            "wall_s": wall_s,
        },
        "tenants": {
            t.adapter: {"task": t.task.name, "arm": t.arm.name, "rounds": t.rows} for t in tenants
        },
        "goals": met,
    }
    path = common.write_results(
        "adaptation", results, [rounds_table(tenants), summary_table(tenants, met)]
    )
    plot(tenants, path.with_suffix(".png"))
    print(f"plot: {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
