"""What the rollout serving tests share: a server's state wired as the server wires it, a
registry with an adapter under rollout, and an engine stand-in at the Engine protocol seam
whose answers, failures and load are set per version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from loraloop.adapters.rollout_policy import RolloutPolicy, RolloutStep
from loraloop.adapters.rollouts.book import RolloutRecord
from loraloop.adapters.validation import ADAPTER_FILES
from loraloop.adapters.versions import NewVersion
from loraloop.serve.engine.interface import AdapterRef, GenerationDelta, SamplingSpec
from loraloop.serve.errors import NonFiniteOutput
from loraloop.serve.openai.protocol import ChatCompletionRequest
from loraloop.serve.openai.service import collect
from loraloop.serve.settings import ServeSettings
from loraloop.serve.state import ServerState

ADAPTER = "acme/support"
PROMPT = "tell me about your product"
SHADOW_ALWAYS = RolloutPolicy(steps=[RolloutStep(percent=0)], shadow_percent=100)


class ScriptedEngine:
    """Answers each version with the text pieces in `answers` (one token each); a version
    in `failing` fails after its first piece. `active_requests` counts generations under
    way, as an engine's does, and may be raised by a test to look busy."""

    max_model_len = 512

    def __init__(self, answers: dict[int, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.failing: set[int] = set()
        self.active_requests = self.aborted_requests = 0
        self.started: list[str] = []  # request ids, in the order they began

    async def start(self) -> None:
        pass

    async def add_adapter(self, adapter: AdapterRef) -> None:
        pass

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        pass

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        adapter: AdapterRef | None,
        request_id: str,
        cache_salt: str | None = None,
    ) -> AsyncIterator[GenerationDelta]:
        version = adapter.version if adapter else 0
        pieces = self.answers.get(version, [f"v{version}", " says hi"])
        self.started.append(request_id)
        self.active_requests += 1
        try:
            for index, piece in enumerate(pieces):
                await asyncio.sleep(0)  # a step of the engine: others may run meanwhile
                if index == 1 and version in self.failing:
                    raise NonFiniteOutput(f"version {version} computed NaN")
                yield GenerationDelta(
                    piece, (index,), None, "stop" if index == len(pieces) - 1 else None
                )
        finally:
            self.active_requests -= 1

    def is_healthy(self) -> bool:
        return True

    async def shutdown(self) -> None:
        pass


def server_settings(
    demo_model: Path, data_dir: Path, database_url: str | None = None, **fields
) -> ServeSettings:
    return ServeSettings(
        model=str(demo_model),
        served_model_name="demo",
        auth=False,
        data_dir=data_dir,
        database_url=database_url,
        max_model_len=512,
        **fields,
    )


def start_rollout(
    state: ServerState, adapter_dirs: dict[str, Path], plan: RolloutPolicy = SHADOW_ALWAYS
) -> RolloutRecord:
    """ADAPTER with version 1 (acme/support's weights) live and a rollout of version 2
    (acme/sales's weights) begun under `plan`."""
    register_two_versions(state, adapter_dirs)
    return state.registry.rollouts.start(ADAPTER, 2, plan, actor="test")


def register_two_versions(state: ServerState, adapter_dirs: dict[str, Path]) -> None:
    registry = state.registry
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    for source in ("acme/support", "acme/sales"):
        files = {name: adapter_dirs[source] / name for name in ADAPTER_FILES}
        registry.adapters.register(ADAPTER, files, NewVersion(), actor="test")
    registry.adapters.promote(ADAPTER, 1, actor="test")


async def serving(state: ServerState) -> ServerState:
    """The state as it is once the engine is up: routes read, versions warm, ready."""
    await state.engine.start()
    await state.watcher.refresh()
    await state.watcher.start_warming()
    state.service.ready = True
    return state


async def ask(
    state: ServerState, model: str = ADAPTER, max_tokens: int = 12, **fields
) -> tuple[str, str]:
    """(the answer's text, what served it) for a greedy chat request."""
    request = ChatCompletionRequest(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=max_tokens,
        **fields,
    )
    generation = await state.service.chat(request, None)
    (choice, *_) = await collect(generation)
    return choice.text, generation.model
