"""Carrying an adapter to a new base model: how many of a tenant's prompts does distillation
need?

Each teacher is a habit taught by DPO on the demo base (begin every answer with one word:
"refund", as in the demo, and "ticket"); each is distilled (trainer/transfers/distillation.py)
to a fresh LoRA on the successor base (another shape, other weights, the same tokenizer) from N
of the tenant's prompts, for N in 8, 16, 32 and 64. Every student is measured on the same
held-out prompts, which no distillation sees, against the baseline measured in the same run: the
successor base as it is (a fresh LoRA: zero B, the base's answers).

Two arms: `recipe` distills with the product's settings at every count (so fewer prompts
also means fewer steps); `equal steps` gives every count the largest count's steps, so that
it differs by its prompts alone.

Per teacher, arm and prompt count, on the held-out prompts: the mean per-token KL(teacher ||
student) and the share of positions where both models' greedy next token is the same, along
the teacher's own continuations (greedy and sampled), drawn and measured by distill's own
`teacher_continuations` and `measure`; the share of prompts whose greedy answer begins with
the teacher's first token; the same for the successor base; and the seconds distill took
(loading, the teacher's sampling, training).

    python -m tests.benchmarks.bench_transfer [--counts 8,16,32,64] [--teachers refund,ticket]
                                              [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.serve.cli.demo import DEMO_POLICY, answers, user_messages
from loraloop.trainer.demo_model import (
    SUCCESSOR_SHAPE,
    DemoModelShape,
    build_demo_model,
    build_tokenizer,
)
from loraloop.trainer.dpo import train_dpo
from loraloop.trainer.pairs import PreferencePair
from loraloop.trainer.rendering import MAX_PROMPT_TOKENS, prompt_ids
from loraloop.trainer.transfers.distillation import (
    Continuation,
    TransferFigures,
    TransferResult,
    TransferSettings,
    distill,
    measure,
    teacher_continuations,
)

from ..oracle_tasks import questions
from . import common

COUNTS = (8, 16, 32, 64)
ARMS = ("recipe", "equal steps")  # see `arm_settings`
TEACHERS = ("refund", "ticket")  # the first word of every answer; one token each
TEACHER_PAIRS = 48
HELD_OUT_PROMPTS = 24
# The pool the counts draw from, in order (count N takes its first N + 1: see `pool_for`),
# and the held-out prompts, never in it.
POOL = questions(max(COUNTS) + 1, seed=3)
HELD_OUT = questions(HELD_OUT_PROMPTS, seed=4, unlike=frozenset(POOL))
# The unit tests' teacher: a gentler rate than the demo's keeps what follows the word in words.
TEACHER_POLICY = TrainingPolicy.model_validate({**DEMO_POLICY, "learning_rate": 0.005})
# The product's recipe, the same at every count (so fewer prompts also means fewer steps).
# distill keeps at least one prompt of those it gets out of training to measure on; the
# benchmark measures on its own held-out set, so it gives distill one prompt more and the
# smallest share it takes.
SETTINGS = TransferSettings(held_out_fraction=1e-6)


def chat(message: str) -> StoredPrompt:
    return StoredPrompt.chat([("user", message)])


def pool_for(count: int) -> list[StoredPrompt]:
    """`count` prompts to train on and the one distill holds out."""
    return [chat(q) for q in POOL[: count + 1]]


def share_equal(ours: list[int], theirs: list[int]) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


def count_row(
    count: int,
    result: TransferResult,
    student: TransferFigures,
    base: TransferFigures,
    firsts: dict[str, list[int]],
) -> dict:
    """One prompt count's figures: the student's against the successor base's, both on the
    held-out set; `firsts` holds each held-out prompt's greedy first answer token of the
    teacher, the student and the base."""
    return {
        "prompts": count,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "seconds": result.seconds,
        "positions": student.positions,
        "kl": student.mean_kl,
        "kl_base": base.mean_kl,
        "kl_ratio": common.ratio(student.mean_kl, base.mean_kl),
        "agreement": student.agreement,
        "agreement_base": base.agreement,
        "agreement_gain": student.agreement - base.agreement,
        "first_token": share_equal(firsts["student"], firsts["teacher"]),
        "first_token_base": share_equal(firsts["base"], firsts["teacher"]),
    }


def by_count(rows: list[dict]) -> dict[tuple[str, int], dict[str, tuple[float, float, float]]]:
    """Per arm and prompt count (in the order first met), each figure's (mean, lowest,
    highest) over the teachers."""
    names = (
        "kl",
        "kl_ratio",
        "agreement",
        "agreement_gain",
        "first_token",
        "first_token_base",
        "seconds",
        "cpu_seconds",
    )
    keys = list(dict.fromkeys((row["arm"], row["prompts"]) for row in rows))
    return {
        key: {
            name: common.spread([row[name] for row in rows if (row["arm"], row["prompts"]) == key])
            for name in names
        }
        for key in keys
    }


# --- Models ------------------------------------------------------------------------------


def build_successor(root: Path) -> Path:
    started = time.monotonic()
    path = build_demo_model(root / "model-successor", seed=1, shape=SUCCESSOR_SHAPE)
    shape = SUCCESSOR_SHAPE
    print(
        f"[model] successor ({shape.num_hidden_layers} layers, hidden {shape.hidden_size}, "
        f"seed 1: the demo tokenizer, other weights) generated in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )
    return path


def load(base: Path, adapter: Path | None = None) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def train_teacher(base: Path, marker: str, seed: int, output: Path) -> Path:
    """An adapter on `base` whose answers begin with `marker`, from DPO pairs whose chosen
    answer has it and whose rejected answer does not. The trainer's per-step log goes to
    `output`.log, kept with the scratch directory when a run fails."""
    messages, texts = user_messages(TEACHER_PAIRS, seed=seed), answers(TEACHER_PAIRS, seed=seed)
    pairs = [
        PreferencePair(chat(message), f"{marker} {text}", text)
        for message, text in zip(messages, texts, strict=True)
    ]
    with output.with_suffix(".log").open("w") as log, contextlib.redirect_stdout(log):
        train_dpo(base, None, pairs, TEACHER_POLICY, output)
    return output


# --- Measuring on the held-out prompts ----------------------------------------------------
# distill measures its student on prompts it splits off those it is given; the benchmark
# measures every student on one held-out set, with distill's functions: the teacher's
# continuations (`teacher_continuations`), and KL(teacher || student) and top-token agreement
# at each of their positions (`measure`).


@torch.no_grad()
def first_tokens(model: torch.nn.Module, tokenizer, prompts: list[StoredPrompt]) -> list[int]:
    """The greedy first answer token per prompt, from the ids the server would render."""
    vocab = len(tokenizer)  # logits past it belong to no token
    return [
        int(
            model(torch.tensor([prompt_ids(tokenizer, p)[-MAX_PROMPT_TOKENS:]]))
            .logits[0, -1, :vocab]
            .argmax()
        )
        for p in prompts
    ]


# --- The run -------------------------------------------------------------------------------


def arm_settings(arm: str, count: int, largest: int) -> TransferSettings:
    """`recipe`: the product's settings at every count (6 epochs, and more up to 100 steps
    for few prompts). `equal steps`: as many epochs as give the largest count's steps (its
    last batch may be short), so that a count differs from the largest by its prompts
    alone."""
    if arm == "recipe":
        return SETTINGS
    rows_of = 1 + SETTINGS.samples_per_prompt  # continuations per prompt
    steps = SETTINGS.epochs * -(-largest * rows_of // SETTINGS.batch_size)
    per_epoch = -(-count * rows_of // SETTINGS.batch_size)
    return replace(SETTINGS, epochs=max(1, round(steps / per_epoch)))


@dataclass(frozen=True)
class Teacher:
    """A teacher adapter and what every student of it is measured against."""

    marker: str
    adapter: Path
    model: torch.nn.Module
    held_out: list[Continuation]  # its continuations of HELD_OUT
    firsts: dict[str, list[int]]  # "teacher" and "base": greedy first tokens on HELD_OUT
    baseline: TransferFigures  # the successor base as it is


def make_teacher(
    marker: str, seed: int, bases: tuple[Path, Path], root: Path, tokenizer
) -> tuple[Teacher, dict]:
    old, new = bases
    prompts = [chat(q) for q in HELD_OUT]
    started = time.monotonic()
    adapter = train_teacher(old, marker, seed, root / f"teacher-{marker}")
    teacher_s = time.monotonic() - started
    model, base = load(old, adapter), load(new)
    rows = teacher_continuations(model, tokenizer, prompts, SETTINGS)
    firsts = {
        "teacher": first_tokens(model, tokenizer, prompts),
        "base": first_tokens(base, tokenizer, prompts),
    }
    teacher = Teacher(
        marker,
        adapter,
        model,
        rows,
        firsts,
        measure(model, base, rows, vocab=len(tokenizer), batch_size=SETTINGS.batch_size),
    )
    habit = share_equal(firsts["teacher"], [tokenizer.convert_tokens_to_ids(marker)] * len(prompts))
    b = teacher.baseline
    print(
        f"[{marker}] teacher trained in {teacher_s:.1f} s; its greedy answers begin with "
        f"{marker!r} on {habit:.0%} of held-out prompts. Successor base as it is: KL "
        f"{b.mean_kl:.3f}, agreement {b.agreement:.3f} over {b.positions} positions, first "
        f"token as the teacher's {share_equal(firsts['base'], firsts['teacher']):.0%}",
        flush=True,
    )
    return teacher, {
        "marker": marker,
        "teacher_seed": seed,
        "teacher_s": teacher_s,
        "teacher_habit": habit,
        "baseline": asdict(b),
    }


def transfer(
    teacher: Teacher,
    bases: tuple[Path, Path],
    arm: str,
    count: int,
    settings: TransferSettings,
    output: Path,
    tokenizer,
) -> dict:
    """Distill on `count` prompts and measure the student on the held-out prompts."""
    old, new = bases
    cpu_before = common.cpu_seconds(os.getpid())
    result = distill(old, teacher.adapter, new, pool_for(count), settings, output)
    # CPU seconds too: on a shared 2-core machine, wall time also counts the others' work.
    cpu_s = common.cpu_seconds(os.getpid()) - cpu_before
    student = load(new, output)
    row = count_row(
        count,
        result,
        measure(
            teacher.model,
            student,
            teacher.held_out,
            vocab=len(tokenizer),
            batch_size=SETTINGS.batch_size,
        ),
        teacher.baseline,
        {
            **teacher.firsts,
            "student": first_tokens(student, tokenizer, [chat(q) for q in HELD_OUT]),
        },
    )
    print(
        f"[{teacher.marker}] {arm}, {count} prompts: {result.steps} steps, loss "
        f"{result.final_loss:.3f}; KL {row['kl']:.3f} ({row['kl_ratio']:.2f}x base), "
        f"agreement {row['agreement']:.3f} ({row['agreement_gain']:+.3f}), first token "
        f"{row['first_token']:.0%} (base {row['first_token_base']:.0%}), "
        f"{result.seconds:.1f} s ({cpu_s:.1f} CPU s)",
        flush=True,
    )
    return {
        "arm": arm,
        **row,
        "cpu_seconds": cpu_s,
        "epochs": settings.epochs,
        "distill_own": asdict(result),
    }


def run_teacher(
    marker: str, seed: int, bases: tuple[Path, Path], counts: list[int], root: Path
) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(bases[1])
    teacher, record = make_teacher(marker, seed, bases, root, tokenizer)
    rows, done = [], {}  # done: a run per distinct (count, settings); one seed, same bytes
    for arm in ARMS:
        for count in counts:
            settings = arm_settings(arm, count, counts[-1])
            if (count, settings) not in done:
                done[count, settings] = transfer(
                    teacher,
                    bases,
                    arm,
                    count,
                    settings,
                    root / f"student-{marker}-{len(done)}",
                    tokenizer,
                )
            rows.append({**done[count, settings], "arm": arm})
    return {**record, "rows": rows}


def counts_table(teachers: list[dict]) -> str:
    lines = [
        "| teacher | arm | prompts | steps | KL (nats/token) | base KL | KL vs base | "
        "agreement | base agreement | gain | first token as teacher | base | seconds | "
        "CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in teachers:
        for r in t["rows"]:
            lines.append(
                f"| {t['marker']} | {r['arm']} | {r['prompts']} | {r['steps']} | "
                f"{r['kl']:.3f} | {r['kl_base']:.3f} | {r['kl_ratio']:.3f}x | "
                f"{r['agreement']:.3f} | {r['agreement_base']:.3f} | "
                f"{r['agreement_gain']:+.3f} | {r['first_token']:.0%} | "
                f"{r['first_token_base']:.0%} | {r['seconds']:.1f} | "
                f"{r['cpu_seconds']:.1f} |"
            )
    return "\n".join(lines)


def summary_table(summary: dict[tuple[str, int], dict]) -> str:
    lines = [
        "| arm | prompts | KL vs base | agreement | gain | first token as teacher | "
        "base | seconds | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (arm, count), s in summary.items():
        lines.append(
            f"| {arm} | {count} | "
            + " | ".join(
                common.format_spread(*s[name])
                for name in (
                    "kl_ratio",
                    "agreement",
                    "agreement_gain",
                    "first_token",
                    "first_token_base",
                    "seconds",
                    "cpu_seconds",
                )
            )
            + " |"
        )
    return "\n".join(lines)


def plot(teachers: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (agreement, kl) = plt.subplots(1, 2, figsize=(8, 3.4))
    for t, color in zip(teachers, ("C0", "C1", "C2", "C3"), strict=False):
        for axis, name in ((agreement, "agreement"), (kl, "kl")):
            for arm, style in zip(ARMS, ("-o", ":s"), strict=True):
                rows = [r for r in t["rows"] if r["arm"] == arm]
                axis.plot(
                    [r["prompts"] for r in rows],
                    [r[name] for r in rows],
                    style,
                    color=color,
                    label=f"{t['marker']}: {arm}",
                )
            axis.axhline(
                t["rows"][0][f"{name}_base"],
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"{t['marker']}: successor base",
            )
    counts = sorted({r["prompts"] for t in teachers for r in t["rows"]})
    for axis, label in (
        (agreement, "greedy next-token agreement"),
        (kl, "KL(teacher || student), nats/token"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(count) for count in counts])
        axis.minorticks_off()
        axis.set_xlabel("prompts distilled on")
        axis.set_ylabel(label)
    agreement.set_ylim(0, 1)
    kl.set_ylim(bottom=0)
    agreement.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--counts",
        default=",".join(map(str, COUNTS)),
        help=f"comma-separated prompt counts, each 1 to {max(COUNTS)}",
    )
    parser.add_argument(
        "--teachers",
        default=",".join(TEACHERS),
        help="comma-separated first words to teach (each one token of the demo tokenizer)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the first teacher at 8 and 16 prompts: checks the script",
    )
    args = parser.parse_args()
    if args.quick:
        args.counts, args.teachers = "8,16", TEACHERS[0]
    try:
        counts = sorted({int(c) for c in args.counts.split(",")})
    except ValueError:
        parser.error(f"--counts takes whole numbers, e.g. 8,16,32; got {args.counts!r}")
    if not counts or counts[0] < 1 or counts[-1] > max(COUNTS):
        parser.error(f"--counts takes numbers from 1 to {max(COUNTS)}; got {args.counts!r}")
    markers = args.teachers.split(",")
    check_markers(parser, markers)
    transformers.logging.disable_progress_bar()  # a bar per model loaded
    with common.scratch_dir("transfer") as root:
        bases = common.build_model(root, "tiny"), build_successor(root)
        started, load_before = time.monotonic(), os.getloadavg()
        teachers = [
            run_teacher(marker, 7 + index, bases, counts, root)
            for index, marker in enumerate(markers)
        ]
        wall_s, load_after = time.monotonic() - started, os.getloadavg()
    rows = [row for t in teachers for row in t["rows"]]
    summary = by_count(rows)
    results = {
        "settings": {
            "counts": counts,
            "teachers": markers,
            "teacher_pairs": TEACHER_PAIRS,
            "teacher_policy": TEACHER_POLICY.model_dump(mode="json"),
            "held_out_prompts": HELD_OUT_PROMPTS,
            "transfer": asdict(SETTINGS),
            "arms": list(ARMS),
            "wall_s": wall_s,
            # 1, 5 and 15 min: other work on the machine shows here.
            "load_average": {"before": load_before, "after": load_after},
        },
        "teachers": teachers,
        "summary": [
            {"arm": arm, "prompts": count, **spreads} for (arm, count), spreads in summary.items()
        ],
    }
    path = common.write_results(
        "transfer", results, [counts_table(teachers), summary_table(summary)]
    )
    plot(teachers, path.with_suffix(".png"))
    print(
        f"plot: {path.with_suffix('.png')}\nwall: {wall_s:.0f} s; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )


def check_markers(parser: argparse.ArgumentParser, markers: list[str]) -> None:
    tokenizer = build_tokenizer(DemoModelShape().vocab_size)  # both bases' tokenizer
    split = [m for m in markers if len(tokenizer.tokenize(m)) != 1]
    if split or len(set(markers)) != len(markers):
        parser.error(
            f"--teachers takes distinct words of one demo-tokenizer token each "
            f"(e.g. {','.join(TEACHERS)}); got {','.join(markers)!r}"
            + (f", where {', '.join(split)} split into several" if split else "")
        )


if __name__ == "__main__":
    main()
