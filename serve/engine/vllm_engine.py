"""The vLLM engine, in-process (AsyncLLM), one LoRARequest per request.

With `openai/tool_calls.py` (vLLM's tool-call parsers), the only place vLLM is imported.

vLLM's own LoRA cache does the hot-swapping: `max_loras` adapters sit in the engine's slots,
`max_cpu_loras` more stay in host memory, the rest are re-read from their (immutable) files.
Where vLLM's LoRA ops would give base-model tokens another request's adapter (on CPU), those
requests run through the null adapter (`null_adapter.py`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from vllm import SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from ..errors import AdapterUnavailable, EngineUnavailable, InvalidRequest
from ..streams import prepend
from .interface import (
    AdapterRef,
    FinishReason,
    GenerationDelta,
    OutputConstraint,
    SamplingSpec,
    TokenLogprob,
)
from .null_adapter import NULL_LORA_ID, NULL_LORA_NAME, NullAdapter

logger = logging.getLogger(__name__)

GiB = 1 << 30


@dataclass(frozen=True)
class VLLMConfig:
    model: str
    max_model_len: int
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    max_logprobs: int
    dtype: str = "auto"
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: float | None = None  # CPU: host memory for the KV cache
    seed: int = 0
    null_adapter: bool = False  # base-model requests through a zero LoRA (null_adapter.py)


def _lora_request(adapter: AdapterRef) -> LoRARequest:
    return LoRARequest(adapter.served_name, adapter.lora_int_id, str(adapter.path))


def _structured_outputs(constraint: OutputConstraint | None) -> StructuredOutputsParams | None:
    if constraint is None:
        return None
    if constraint.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if constraint.kind == "json_schema":
        return StructuredOutputsParams(json=constraint.spec)
    return StructuredOutputsParams(structural_tag=constraint.spec)


# A source location in the grammar backend's messages ("[19:11:55] /project/cpp/x.cc:83: ").
_BACKEND_LOCATION = re.compile(r"(\[[\d:]+\]\s*)?/\S+\.(cc|h|cpp|py):\d+:\s*")


def _grammar_refused(constraint: OutputConstraint | None, exc: Exception | None) -> InvalidRequest:
    """The 400 for a grammar the engine cannot build, naming the request field it came from
    and what the backend said, without the backend's source locations."""
    why = _BACKEND_LOCATION.sub("", str(exc)).strip()[:500] if exc is not None else ""
    if constraint is None:  # vLLM refused something else about the request
        return InvalidRequest(f"request: {why}")
    return InvalidRequest(
        f"{constraint.param}: the schema could not be compiled into a grammar"
        f"{f': {why}' if why else ''}. Simplify the schema (patterns, sizes).",
        param=constraint.param,
    )


# vLLM's lowest logit bias: a token so biased is never sampled next to any other.
_BANNED = -100.0


def unwritten_specials(tokenizer, model_config) -> tuple[int, ...]:
    """The special tokens that cannot be part of a structured answer's text: all but those
    that end the answer. The grammar backend reads a special token's text (`<|bos|>`) as
    ordinary characters, which fit inside a JSON string, while the detokenizer drops it: a
    sampled one would silently shorten a string the grammar had counted (an empty string
    was seen under minLength 2)."""
    ends = {tokenizer.eos_token_id}
    configured = getattr(model_config.hf_config, "eos_token_id", None)
    ends.update(configured if isinstance(configured, list) else [configured])
    return tuple(sorted(set(tokenizer.all_special_ids) - ends))


def _logit_bias(spec: SamplingSpec, unwritten: tuple[int, ...]) -> dict[int, float] | None:
    bias = dict(spec.logit_bias)
    if spec.constraint is not None and spec.skip_special_tokens:
        bias.update(dict.fromkeys(unwritten, _BANNED))
    return bias or None


def sampling_params(spec: SamplingSpec, unwritten: tuple[int, ...] = ()) -> SamplingParams:
    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        min_p=spec.min_p,
        seed=spec.seed,
        stop=list(spec.stop) or None,
        logprobs=spec.logprobs,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        repetition_penalty=spec.repetition_penalty,
        logit_bias=_logit_bias(spec, unwritten),
        structured_outputs=_structured_outputs(spec.constraint),
        skip_special_tokens=spec.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,
    )


def _token_logprobs(token_ids, logprobs, k: int) -> tuple[TokenLogprob, ...]:
    # logprobs: one {token_id: Logprob} per new token; it always holds the sampled token.
    converted = []
    for token_id, candidates in zip(token_ids, logprobs, strict=True):
        chosen = candidates[token_id]
        ranked = sorted(candidates.values(), key=lambda c: c.logprob, reverse=True)[:k]
        top = tuple((c.decoded_token or "", c.logprob) for c in ranked)
        converted.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
    return tuple(converted)


def _finish_reason(reason: str | None, finished: bool) -> FinishReason | None:
    # vLLM also reports "abort", which only a request we abandoned ever sees.
    if not finished:
        return None
    return "length" if reason == "length" else "stop"


class VLLMEngine:
    def __init__(self, config: VLLMConfig) -> None:
        self.config = config
        self.max_model_len = config.max_model_len
        self.active_requests = 0
        self.aborted_requests = 0
        self._engine: AsyncLLM | None = None
        self._null: NullAdapter | None = None
        self._unwritten: tuple[int, ...] = ()  # see unwritten_specials
        self._base_lora: LoRARequest | None = None  # what requests without an adapter get

    async def start(self) -> None:
        c = self.config
        if c.null_adapter:  # written first: a model it cannot be built for fails at once
            self._null = await asyncio.to_thread(NullAdapter, c.model)
        args = AsyncEngineArgs(
            model=c.model,
            max_model_len=c.max_model_len,
            dtype=c.dtype,  # type: ignore[arg-type]  # vLLM refuses an unknown name, listing its own
            enforce_eager=c.enforce_eager,
            gpu_memory_utilization=c.gpu_memory_utilization,
            kv_cache_memory_bytes=int(c.kv_cache_gib * GiB) if c.kv_cache_gib else None,
            enable_lora=True,
            max_loras=c.max_loras,
            max_cpu_loras=c.max_cpu_loras,
            max_lora_rank=c.max_lora_rank,  # type: ignore[arg-type]  # settings take only vLLM's ranks
            max_logprobs=c.max_logprobs,
            seed=c.seed,
            # Structured outputs without free whitespace: JSON answers spend their tokens on
            # content (a weak model given the choice pads with whitespace until max_tokens).
            # xgrammar: the backend that also compiles the structural tags of tool calls.
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            disable_log_stats=True,
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._unwritten = unwritten_specials(
            self._engine.get_tokenizer(), self._engine.model_config
        )
        if self._null is not None:
            # Set before it is loaded: vLLM would load it on first use from its files anyway,
            # and no base-model request may take the shared path in between.
            self._base_lora = LoRARequest(NULL_LORA_NAME, NULL_LORA_ID, str(self._null.path))
            await self._engine.add_lora(self._base_lora)

    @property
    def engine(self) -> AsyncLLM:
        if self._engine is None:
            raise EngineUnavailable("The engine is still starting; retry shortly.")
        return self._engine

    async def add_adapter(self, adapter: AdapterRef) -> None:
        # add_lora fails cleanly on bad weights, whereas a bad adapter reaching generate()
        # kills the engine for every tenant: every version passes through here first.
        try:
            await self.engine.add_lora(_lora_request(adapter))
        except EngineDeadError as exc:
            raise EngineUnavailable("The engine has stopped.") from exc
        except Exception as exc:
            logger.warning("loading adapter %s failed: %s", adapter.served_name, exc)
            raise AdapterUnavailable(
                f"The adapter '{adapter.served_name}' could not be loaded; "
                "an operator must register a working version."
            ) from exc

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self.engine.remove_lora(adapter.lora_int_id)

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        adapter: AdapterRef | None,
        request_id: str,
        cache_salt: str | None = None,
    ) -> AsyncGenerator[GenerationDelta, None]:
        prompt = TokensPrompt(prompt_token_ids=prompt_token_ids)
        if cache_salt is not None:
            prompt["cache_salt"] = cache_salt
        stream = self.engine.generate(
            prompt,
            sampling_params(sampling, self._unwritten),
            request_id,
            lora_request=_lora_request(adapter) if adapter else self._base_lora,
        )
        self.active_requests += 1
        finished = False
        try:
            try:
                first = await anext(stream)
            except (VLLMClientError, ValueError) as exc:
                # vLLM checks a request's grammar (schema, tags) before it queues the request.
                raise _grammar_refused(sampling.constraint, exc) from exc
            async for output in prepend(first, stream):
                finished = output.finished
                completion = output.outputs[0]
                if (
                    completion.finish_reason == "error"
                    and sampling.constraint is not None
                    and not completion.token_ids
                ):
                    # The engine compiles the grammar after queueing; it failed (logged there).
                    raise _grammar_refused(sampling.constraint, None)
                logprobs = None
                if sampling.logprobs is not None and completion.logprobs is not None:
                    logprobs = _token_logprobs(
                        completion.token_ids, completion.logprobs, sampling.logprobs
                    )
                yield GenerationDelta(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    logprobs=logprobs,
                    finish_reason=_finish_reason(completion.finish_reason, output.finished),
                )
        except EngineDeadError as exc:
            raise EngineUnavailable("The engine has stopped.") from exc
        finally:
            # Closing vLLM's generator aborts the request in the engine (client gone).
            await stream.aclose()
            self.active_requests -= 1
            self.aborted_requests += not finished

    def is_healthy(self) -> bool:
        return self._engine is not None and not self._engine.errored

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        if self._null is not None:  # after the engine: it may read the files until it stops
            self._null.close()
            self._null = None
