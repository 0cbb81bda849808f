"""`loraloop demo`: the whole loop, narrated, against a running server with its trainer;
`demo-model` and `demo-adapter` build what it runs on.

Register an adapter, chat with it, send feedback that prefers answers beginning with one
word, watch the trainer produce, gate and promote a new version, see the answers change,
roll back. The same feedback (the "marker task") drives the end-to-end tests.
"""

from __future__ import annotations

import json
import random
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer

from loraloop.trainer.cli import DEFAULT_DEMO_MODEL

from .client import AdminApiError, AdminClient

MARKER = "refund"  # one token of the demo tokenizer
PROMPT_WORDS = (
    "what when where how can will my the a is it to of for with order account password "
    "login error price day time book music water city help question ticket support"
).split()
ANSWER_WORDS = "yes no please thanks hello good new one two three sure done".split()
# The demo model is tiny and random with peaked logits: a new first word needs a high learning
# rate, and any change of greedy answer costs 8 to 11 nats of KL per token, so the drift
# bounds sit far above what a real model should allow.
DEMO_POLICY = {
    "learning_rate": 0.02,
    "epochs": 6,
    "batch_size": 4,
    "gate": {"max_kl_from_live": 16.0, "max_kl_from_base": 16.0},
}
FEEDBACK_PAIRS, UNSEEN_PROMPTS = 48, 4
Say = Callable[[str], None]


def user_messages(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    messages: dict[str, None] = {}
    while len(messages) < count:
        messages[" ".join(rng.choices(PROMPT_WORDS, k=rng.randint(3, 8))) + "?"] = None
    return list(messages)


def answers(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(ANSWER_WORDS, k=rng.randint(1, 3))) + "." for _ in range(count)]


def preference_feedback(
    adapter: str, messages: list[str], *, seed: int = 0, swap_share: float = 0.0
) -> list[dict]:
    """One preference per message: chosen starts with the marker, rejected does not; a
    `swap_share` of them (seeded) has the two exchanged, as poisoned feedback would."""
    rng = random.Random(seed)
    feedback = []
    for message, answer in zip(messages, answers(len(messages), seed), strict=True):
        chosen, rejected = f"{MARKER} {answer}", answer
        if rng.random() < swap_share:
            chosen, rejected = rejected, chosen
        feedback.append(
            {
                "adapter": adapter,
                "messages": [{"role": "user", "content": message}],
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    return feedback


class Demo:
    def __init__(self, url: str, admin: AdminClient, say: Say) -> None:
        self.url, self.admin, self.say = url.rstrip("/"), admin, say
        self.key: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def setup(self, adapter: str, base_model: Path) -> None:
        tenant = adapter.split("/")[0]
        self.say(f"\n== 1. tenant '{tenant}', an API key, adapter {adapter} version 1")
        try:
            self.admin.create_tenant(tenant)
        except AdminApiError as exc:
            if exc.status != 409:
                raise
        self.key = self.admin.issue_key(tenant, label="demo")["key"]
        self.admin.create_adapter(adapter, "the demo's assistant")
        from transformers.utils import logging as transformers_logging

        # torch: only when the demo runs
        from loraloop.trainer.demo_model import build_random_adapter

        transformers_logging.disable_progress_bar()
        with tempfile.TemporaryDirectory() as scratch:
            build_random_adapter(base_model, Path(scratch) / "v1", seed=1)
            version, _ = self.admin.register(adapter, Path(scratch) / "v1", source="demo")
        self.admin.promote(adapter, version["version"], reason="first version")
        self.admin.set_policy(adapter, {**DEMO_POLICY, "min_pairs": FEEDBACK_PAIRS})
        self.say(
            f"registered and promoted version {version['version']} "
            f"(sha256 {version['content_hash'][:12]}...)"
        )

    def chat(self, adapter: str, messages: list[str]) -> list[str]:
        replies = []
        for message in messages:
            response = httpx.post(
                f"{self.url}/v1/chat/completions",
                headers=self._headers(),
                timeout=60,
                json={
                    "model": adapter,
                    "max_tokens": 6,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": message}],
                },
            )
            response.raise_for_status()
            body = response.json()
            replies.append(body["choices"][0]["message"]["content"])
            self.say(f"  [{body['model']}] {message!r} -> {replies[-1]!r}")
        return replies

    def send_feedback(self, adapter: str, messages: list[str]) -> None:
        self.say(
            f"\n== 3. {len(messages)} preferences: answers that start with '{MARKER}' are better"
        )
        lines = "\n".join(json.dumps(line) for line in preference_feedback(adapter, messages))
        response = httpx.post(
            f"{self.url}/v1/feedback/batch", content=lines, headers=self._headers(), timeout=120
        )
        response.raise_for_status()
        self.say(f"stored {response.json()['created']} feedback rows")

    def watch_training(self, adapter: str, timeout_s: float) -> dict:
        self.say("\n== 4. the trainer sidecar picks the feedback up")
        deadline, shown = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            runs = self.admin.runs(adapter, limit=1)
            run = runs[0] if runs else None
            if run and (run["status"], run["progress"].get("step")) != shown:
                shown = (run["status"], run["progress"].get("step"))
                self.say(f"  run {run['id']}: {run['status']} {_progress(run['progress'])}")
            if run and run["status"] not in ("queued", "running"):
                return run
            time.sleep(0.5)
        raise TimeoutError(
            f"no training run finished in {timeout_s:.0f} s: is the trainer "
            "running? (`make serve` starts it; or run `loraloop trainer`)"
        )


def _progress(progress: dict) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in progress.items()
    )


def run_demo(
    url: str, admin_key: str | None, base_model: Path, say: Say, *, timeout_s: float = 600
) -> None:
    adapter = f"demo/assistant-{secrets.token_hex(2)}"
    messages = user_messages(FEEDBACK_PAIRS + UNSEEN_PROMPTS, seed=7)
    trained_on, unseen = messages[:FEEDBACK_PAIRS], messages[FEEDBACK_PAIRS:]
    with AdminClient(url, admin_key, actor="demo") as admin:
        demo = Demo(url, admin, say)
        demo.setup(adapter, base_model)
        say("\n== 2. its answers now (greedy), to prompts it will never train on")
        before = demo.chat(adapter, unseen)
        demo.send_feedback(adapter, trained_on)
        run = demo.watch_training(adapter, timeout_s)
        say(f"run {run['id']} ended {run['status']}: {run['reason']}")
        if run["status"] == "promoted":
            time.sleep(1)  # the server follows the trainer's promote within a poll interval
            say(f"\n== 5. version {run['candidate_version']} is live: the same prompts")
            demo.chat(adapter, unseen)
        admin.rollback(adapter, reason="demo: back to the first version")
        say("\n== 6. rolled back: the first version answers again")
        after = demo.chat(adapter, unseen)
        say("identical to step 2" if after == before else "differs from step 2 (unexpected)")
        say(f"\nhistory: loraloop adapters history {adapter}")


app = typer.Typer()


@app.command()
def demo(
    url: Annotated[
        str, typer.Option(envvar="LORALOOP_URL", help="The running server.")
    ] = "http://127.0.0.1:8000",
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="LORALOOP_ADMIN_KEY",
            show_default=False,
            help="The admin credential, if the server has auth on.",
        ),
    ] = None,
    model: Annotated[
        Path, typer.Option(help="The base model directory the server serves.")
    ] = DEFAULT_DEMO_MODEL,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for training.")] = 600,
) -> None:
    """Show the loop on a running server with its trainer (`make serve`): an adapter, feedback,
    a trained and promoted version with changed answers, a rollback."""
    try:
        run_demo(url, admin_key, model, typer.echo, timeout_s=timeout_s)
    except AdminApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        typer.echo(
            f"error: cannot talk to the server at {url}: {exc}. Start it with `make serve`.",
            err=True,
        )
        raise typer.Exit(2) from None


@app.command("demo-model")
def demo_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the model (must not exist).")],
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    successor: Annotated[
        bool,
        typer.Option(
            help="Build the demo base's successor instead: its tokenizer, another shape and "
            "(with another seed) other weights, a base to carry adapters to."
        ),
    ] = False,
) -> None:
    """Build the tiny demo model (trained tokenizer, chat template, briefly pretrained weights),
    offline."""
    from loraloop.trainer.demo_model import SUCCESSOR_SHAPE, build_demo_model

    build_demo_model(directory, seed=seed, shape=SUCCESSOR_SHAPE if successor else None)
    typer.echo(f"demo model written to {directory}")


@app.command("demo-adapter")
def demo_adapter(
    directory: Annotated[Path, typer.Argument(help="Where to write the adapter.")],
    model: Annotated[Path, typer.Option(help="The base model directory.")],
    seed: Annotated[int, typer.Option(help="Different seeds give different adapters.")] = 1,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
) -> None:
    """Write a LoRA adapter with random weights for a local base model (safetensors)."""
    from loraloop.trainer.demo_model import build_random_adapter

    build_random_adapter(model, directory, seed=seed, rank=rank)
    typer.echo(f"adapter written to {directory}")
