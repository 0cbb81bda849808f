"""A request's fields as the engine takes them: prompt token ids and a sampling spec, each
checked against the bounds an operator configures (the OpenAI API's own fixed ranges are
checked in protocol.py, as the request is read).
"""

from __future__ import annotations

from dataclasses import replace

from loraloop.adapters.prompts import PromptRenderer, StoredPrompt

from ..chat import stored_prompt
from ..engine.interface import SamplingSpec
from ..errors import InvalidRequest
from ..settings import RequestLimits
from .protocol import ChatCompletionRequest, SamplingFields
from .structured import response_constraint


class EngineInputs:
    def __init__(self, renderer: PromptRenderer, limits: RequestLimits) -> None:
        self.renderer, self.limits = renderer, limits

    def check_messages(self, request: ChatCompletionRequest) -> None:
        if len(request.messages) > self.limits.max_messages:
            raise InvalidRequest(
                f"At most {self.limits.max_messages} messages per request.", param="messages"
            )

    def chat_prompt(self, request: ChatCompletionRequest) -> StoredPrompt:
        """The conversation (and its tools) as the registry keeps and the template renders it."""
        stored = stored_prompt(request.messages, request.tools)
        self._check_prompt_chars(stored.chars, "messages")
        return stored

    def render(self, stored: StoredPrompt) -> list[int]:
        return self.renderer.render(stored)

    def completion_prompts(self, prompt) -> list[list[int]]:
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt or len(prompt) > self.limits.max_prompts:
            raise InvalidRequest(
                f"Send between 1 and {self.limits.max_prompts} prompts.", param="prompt"
            )
        texts = [p for p in prompt if isinstance(p, str)]
        self._check_prompt_chars(sum(map(len, texts)), "prompt")
        renderer = self.renderer
        token_lists = [
            renderer.text(p) if isinstance(p, str) else renderer.check_token_ids(p, "prompt")
            for p in prompt
        ]
        if any(not ids for ids in token_lists):
            raise InvalidRequest("A prompt must not be empty.", param="prompt")
        return token_lists

    def stored_texts(self, token_lists: list[list[int]]) -> list[StoredPrompt]:
        """Completion prompts as feedback names them: their text, token ids decoded."""
        return [StoredPrompt(text=self.renderer.tokenizer.decode(ids)) for ids in token_lists]

    def top_logprobs(self, requested: int, param: str) -> int:
        if requested > self.limits.max_top_logprobs:
            raise InvalidRequest(
                f"{param} must be at most {self.limits.max_top_logprobs}.", param=param
            )
        return requested

    def sampling(self, request: SamplingFields, *, logprobs: int | None) -> SamplingSpec:
        """The request's sampling settings, checked against the configured bounds; the token
        budget is set per prompt by `fit`."""
        limits, max_tokens = self.limits, request.requested_max_tokens
        vocab = self.renderer.vocab_size
        if request.top_k is not None and request.top_k > vocab:
            raise InvalidRequest(
                f"top_k must be at most the vocabulary size, {vocab}.", param="top_k"
            )
        if request.n > limits.max_n:
            raise InvalidRequest(f"n must be at most {limits.max_n}.", param="n")
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise InvalidRequest(
                f"{request.max_tokens_param} must be at most {limits.max_tokens}.",
                param=request.max_tokens_param,
            )
        stop = request.stop_sequences()
        if len(stop) > limits.max_stop or any(
            not 0 < len(s) <= limits.max_stop_chars for s in stop
        ):
            raise InvalidRequest(
                f"Up to {limits.max_stop} stop sequences of 1 to {limits.max_stop_chars} "
                "characters each.",
                param="stop",
            )
        return SamplingSpec(
            max_tokens=max_tokens or limits.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=_given(request.top_k, 0),
            min_p=_given(request.min_p, 0.0),
            seed=request.seed,
            stop=stop,
            logprobs=logprobs,
            presence_penalty=_given(request.presence_penalty, 0.0),
            frequency_penalty=_given(request.frequency_penalty, 0.0),
            repetition_penalty=_given(request.repetition_penalty, 1.0),
            logit_bias=self._logit_bias(request),
            constraint=response_constraint(request.response_format, limits),
        )

    def fit(
        self, sampling: SamplingSpec, request: SamplingFields, prompt: list[int], prompt_param: str
    ) -> SamplingSpec:
        """`sampling` with the token budget that is left for this prompt."""
        return replace(
            sampling,
            max_tokens=self.renderer.max_tokens_for(
                len(prompt),
                request.requested_max_tokens,
                self.limits.default_max_tokens,
                prompt_param=prompt_param,
                max_tokens_param=request.max_tokens_param,
            ),
        )

    def _logit_bias(self, request: SamplingFields) -> tuple[tuple[int, float], ...]:
        bias = request.logit_bias or {}
        if len(bias) > self.limits.max_logit_bias:
            raise InvalidRequest(
                f"logit_bias has {len(bias)} entries; the limit is {self.limits.max_logit_bias}.",
                param="logit_bias",
            )
        vocab = self.renderer.vocab_size
        checked = []
        for token, value in bias.items():
            if not (token.isascii() and token.isdigit() and int(token) < vocab):
                raise InvalidRequest(
                    f"logit_bias: '{token[:32]}' is not a token id; ids are 0 to {vocab - 1}.",
                    param="logit_bias",
                )
            if not -100 <= value <= 100:
                raise InvalidRequest(
                    f"logit_bias: the bias of token {token} must be in [-100, 100].",
                    param="logit_bias",
                )
            checked.append((int(token), value))
        return tuple(checked)

    def _check_prompt_chars(self, chars: int, param: str) -> None:
        if chars > self.limits.max_prompt_chars:
            raise InvalidRequest(
                f"The prompt has {chars} characters; the limit is {self.limits.max_prompt_chars}.",
                param=param,
            )


def per_choice(spec: SamplingSpec, sample: int) -> SamplingSpec:
    # With n > 1 and a seed, each sample gets its own seed so the choices differ, yet the
    # whole response stays reproducible.
    if spec.seed is None or sample == 0:
        return spec
    return replace(spec, seed=(spec.seed + sample) % 2**63)


def _given(value, default):
    return default if value is None else value
