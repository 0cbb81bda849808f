"""transformers + PEFT reference engine: the oracle in tests and the baseline in benchmarks.

Deliberately plain: one sequence at a time, token by token with a KV cache, in a worker
thread. It is not a second product; it exists so vLLM's answers can be checked against the
library that defines LoRA, and so vLLM's speed has something to be compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ..errors import AdapterUnavailable, InvalidRequest
from .interface import AdapterRef, FinishReason, GenerationDelta, SamplingSpec, TokenLogprob

_DONE = object()


class IncrementalText:
    """Turns a growing token list into text deltas, holding back what a stop string or a
    half-decoded UTF-8 character could still change."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.sent = 0

    def step(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        """Returns (new text, stopped on a stop string)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        stopped = cut >= 0
        if stopped:
            text = text[:cut]
        elif not final:
            text = text[: max(self.sent, len(text) - self.holdback)]
        # A trailing U+FFFD is a character whose remaining bytes are still to come; like vLLM,
        # never emit it, not even at the end.
        text = text.rstrip("\ufffd")
        delta, self.sent = text[self.sent :], max(self.sent, len(text))
        return delta, stopped


class ReferenceEngine:
    def __init__(self, model: str, *, max_model_len: int, dtype: str = "float32") -> None:
        self.max_model_len = max_model_len
        self._model_path, self._dtype = model, getattr(torch, dtype)
        self.active_requests = 0
        self.aborted_requests = 0
        self._model: PreTrainedModel | PeftModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._adapters: set[str] = set()
        self._lock = threading.Lock()  # one forward pass at a time; adapters switch globally

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        model = AutoModelForCausalLM.from_pretrained(self._model_path, dtype=self._dtype)
        model.eval()
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._model = model

    def _loaded(self) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
        if self._model is None or self._tokenizer is None:
            raise RuntimeError("The reference engine serves only after start() has loaded it.")
        return self._model, self._tokenizer

    async def add_adapter(self, adapter: AdapterRef) -> None:
        try:
            await asyncio.to_thread(self._load_adapter, adapter)
        except Exception as exc:
            raise AdapterUnavailable(
                f"The adapter '{adapter.served_name}' could not be loaded."
            ) from exc

    def _load_adapter(self, adapter: AdapterRef) -> None:
        name, path = str(adapter.lora_int_id), str(adapter.path)
        with self._lock:
            if name in self._adapters:
                return
            model, _ = self._loaded()
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name)
            else:
                self._model = PeftModel.from_pretrained(model, path, adapter_name=name)
            self._adapters.add(name)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        name = str(adapter.lora_int_id)
        with self._lock:
            model, _ = self._loaded()
            if name in self._adapters and isinstance(model, PeftModel):
                model.delete_adapter(name)
                self._adapters.discard(name)

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        adapter: AdapterRef | None,
        request_id: str,
        cache_salt: str | None = None,  # no prefix cache here: nothing to partition
    ) -> AsyncGenerator[GenerationDelta, None]:
        _check_supported(sampling)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                self._decode(prompt_token_ids, sampling, adapter, cancelled, emit)
            except BaseException as exc:
                emit(exc)
            finally:
                emit(_DONE)

        worker = loop.run_in_executor(None, run)
        self.active_requests += 1
        finished = False
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            cancelled.set()  # the client left or the request ended: stop decoding
            await asyncio.shield(worker)
            self.active_requests -= 1
            self.aborted_requests += not finished

    def _decode(self, prompt_ids, sampling: SamplingSpec, adapter, cancelled, emit) -> None:
        with self._lock, torch.inference_mode(), self._select(adapter) as model:
            generator = torch.Generator().manual_seed(sampling.seed or 0)
            text = IncrementalText(self._loaded()[1], sampling.stop)
            input_ids, past, generated = torch.tensor([prompt_ids]), None, []
            bias = _bias(sampling.logit_bias, model.config.vocab_size)
            for step in range(sampling.max_tokens):
                if cancelled.is_set():
                    return
                out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logprobs = torch.log_softmax(out.logits[0, -1].float() + bias, dim=-1)
                token = _sample(logprobs, sampling, generator)
                generated.append(token)
                eos = token in self._eos_ids
                last = eos or step == sampling.max_tokens - 1
                delta, stopped = text.step(generated[:-1] if eos else generated, final=last)
                finish: FinishReason | None = (
                    "stop" if (eos or stopped) else ("length" if last else None)
                )
                emit(
                    GenerationDelta(
                        delta, (token,), self._logprobs(token, logprobs, sampling), finish
                    )
                )
                if finish:
                    return
                input_ids = torch.tensor([[token]])

    @contextlib.contextmanager
    def _select(self, adapter: AdapterRef | None):
        # LoRA layers are injected into the base modules, so "no adapter" must switch them off.
        model, _ = self._loaded()
        if not isinstance(model, PeftModel):  # no adapter was ever loaded
            if adapter is not None:
                raise AdapterUnavailable(f"The adapter '{adapter.served_name}' is not loaded.")
            yield model
        elif adapter is not None:
            model.set_adapter(str(adapter.lora_int_id))
            yield model
        else:
            with model.disable_adapter():
                yield model

    def _logprobs(self, token: int, logprobs, sampling: SamplingSpec):
        if sampling.logprobs is None:
            return None
        tokenizer = self._loaded()[1]

        def decode(ids: list[int]) -> str:
            text = tokenizer.decode(ids)
            assert isinstance(text, str)  # one sequence decodes to one string
            return text

        values, ids = logprobs.topk(max(sampling.logprobs, 1))
        top = tuple((decode([i]), v) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
        return (TokenLogprob(decode([token]), logprobs[token].item(), top[: sampling.logprobs]),)

    def is_healthy(self) -> bool:
        return self._model is not None

    async def shutdown(self) -> None:
        self._model = None


# What the reference samples with; the rest of SamplingSpec is vLLM's alone, and refused.
_SUPPORTED = SamplingSpec(max_tokens=1)
_UNSUPPORTED = (
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "constraint",
)


def _check_supported(sampling: SamplingSpec) -> None:
    used = [name for name in _UNSUPPORTED if getattr(sampling, name) != getattr(_SUPPORTED, name)]
    if used:
        param = "response_format" if used[0] == "constraint" else used[0]
        raise InvalidRequest(
            f"The reference engine does not implement {', '.join(used)}; the vLLM engine does.",
            param=param,
        )


def _bias(logit_bias: tuple[tuple[int, float], ...], vocab_size: int) -> torch.Tensor:
    """What logit_bias adds to each token's logit (the request checks already bounded it)."""
    bias = torch.zeros(vocab_size)
    for token, value in logit_bias:
        bias[token] += value
    return bias


def _sample(logprobs: torch.Tensor, sampling: SamplingSpec, generator) -> int:
    if sampling.temperature == 0:
        return int(logprobs.argmax())
    probs = torch.softmax(logprobs / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
