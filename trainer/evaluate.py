"""Measurements of an adapter version on the frozen base model: how it ranks held-out
preference pairs, and how far its next-token distributions drift from another version's.

Everything is scored without gradients on the trainer's one copy of the base (its device and
dtype; log-probabilities and KL in float32), on the token ids the server would see (see
rendering.py).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file

from loraloop.adapters.names import WEIGHTS_FILE

from .pairs import PreferencePair, Prompt
from .rendering import answer_logps, encode_pair, prompt_ids
from .shared_base import SharedBase

BATCH_PAIRS = 16
MAX_LOADED_ADAPTERS = 4  # a gate compares two versions; a few more spare reloads


@dataclass(frozen=True)
class PreferenceScore:
    accuracy: float  # fraction of pairs with log p(chosen) > log p(rejected)
    mean_margin: float
    # Per pair: sum log p(chosen | prompt) - sum log p(rejected | prompt) over answer tokens.
    margins: tuple[float, ...]


class Scorer:
    """The shared base model with adapters attached and switched through PEFT. Training
    borrows the same base in between; the loaded adapters then load again on next use."""

    def __init__(self, base: SharedBase | Path) -> None:
        self.base = SharedBase.of(base)
        self.tokenizer = self.base.tokenizer
        self._device = self.base.placement.device
        eos = self.base.borrow().generation_config.eos_token_id
        self._stop_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._peft: PeftModel | None = None  # the base wrapped, while adapters are loaded
        self._loaded: OrderedDict[tuple, str] = OrderedDict()  # file identity -> PEFT name
        self._names = 0

    @torch.no_grad()
    def preference(self, adapter: Path | None, pairs: Sequence[PreferencePair]) -> PreferenceScore:
        if not pairs:
            raise ValueError("preference needs at least one pair")
        encoded = [encode_pair(self.tokenizer, pair) for pair in pairs]
        margins: list[float] = []
        with self._selected(adapter) as model:
            for start in range(0, len(encoded), BATCH_PAIRS):
                batch = encoded[start : start + BATCH_PAIRS]
                chosen = answer_logps(model, [(ex.prompt, ex.chosen) for ex in batch])
                rejected = answer_logps(model, [(ex.prompt, ex.rejected) for ex in batch])
                margins.extend((chosen - rejected).tolist())
        return PreferenceScore(
            accuracy=sum(m > 0 for m in margins) / len(margins),
            mean_margin=math.fsum(margins) / len(margins),
            margins=tuple(margins),
        )

    @torch.no_grad()
    def mean_token_kl(
        self,
        adapter_p: Path,
        adapter_q: Path | None,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 16,
    ) -> float:
        """KL(p || q) in nats over the full next-token distribution, at each position of p's
        own greedy continuation: averaged over positions per prompt, then over prompts.
        `adapter_q` None is the base model."""
        if not prompts:
            raise ValueError("mean_token_kl needs at least one prompt")
        per_prompt = []
        for prompt in prompts:
            ids = prompt_ids(self.tokenizer, prompt)
            with self._selected(adapter_p) as model:
                tokens, p_logits = self._greedy(model, ids, max_new_tokens)  # p_logits: [n, V]
            with self._selected(adapter_q) as model:
                sequence = torch.tensor([[*ids, *tokens]], device=self._device)
                # Position t predicts token t + 1: the n positions that chose the new tokens.
                q_logits = model(input_ids=sequence).logits[0, len(ids) - 1 : -1].float()
            per_prompt.append(float(_kl(p_logits, q_logits).mean()))
        return math.fsum(per_prompt) / len(per_prompt)

    @torch.no_grad()
    def answers(
        self,
        adapter: Path | None,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[str]:
        """Each prompt's answer, as the text a user would read: greedy, or sampled at
        `temperature` from a generator seeded by (seed, the prompt's index), so that two
        versions answering the same prompts draw the same random numbers."""
        answers = []
        with self._selected(adapter) as model:
            for index, prompt in enumerate(prompts):
                ids = prompt_ids(self.tokenizer, prompt)
                if temperature > 0:
                    # A CPU generator on every device: the same draws wherever it runs.
                    generator = torch.Generator().manual_seed(seed * 100_003 + index)
                    tokens = self._sampled(model, ids, max_new_tokens, temperature, generator)
                else:
                    tokens, _ = self._greedy(model, ids, max_new_tokens)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                assert isinstance(text, str)  # one sequence decodes to one string
                answers.append(text)
        return answers

    def _greedy(self, model, prompt: list[int], max_new_tokens: int):
        """Greedy tokens after `prompt`, stopping on end-of-sequence (kept), and the logits
        that chose each: ([n], [n, V])."""
        input_ids, past, tokens, logits = self._ids(prompt), None, [], []
        for _ in range(max_new_tokens):
            out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits[0, -1].float())
            tokens.append(int(logits[-1].argmax()))
            if tokens[-1] in self._stop_ids:
                break
            input_ids = self._ids(tokens[-1:])
        return tokens, torch.stack(logits)

    def _sampled(
        self,
        model,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float,
        generator: torch.Generator,
    ) -> list[int]:
        input_ids, past, tokens = self._ids(prompt), None, []
        for _ in range(max_new_tokens):
            out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            probabilities = (out.logits[0, -1].float() / temperature).softmax(-1).cpu()
            tokens.append(int(torch.multinomial(probabilities, 1, generator=generator)))
            if tokens[-1] in self._stop_ids:
                break
            input_ids = self._ids(tokens[-1:])
        return tokens

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], device=self._device)

    @contextlib.contextmanager
    def _selected(self, adapter: Path | None) -> Iterator[torch.nn.Module]:
        # LoRA layers are injected into the base modules, so "no adapter" must switch them off.
        if adapter is not None:
            peft, name = self._load(Path(adapter))  # may wrap the base in a PeftModel first
            peft.set_adapter(name)
            yield peft
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            yield self.base.borrow()

    def _load(self, adapter: Path) -> tuple[PeftModel, str]:
        """The model holding `adapter` and its PEFT name there, loading it unless these very
        files are loaded already.
        A path may hold other weights later (scratch directories are reused), so the key is
        the weights file's identity, not its path."""
        weights = (adapter / WEIGHTS_FILE).stat()
        key = (str(adapter.resolve()), weights.st_ino, weights.st_mtime_ns, weights.st_size)
        peft = self._peft
        if peft is not None and key in self._loaded:
            self._loaded.move_to_end(key)
            return peft, self._loaded[key]
        name = f"v{self._names}"  # PEFT adapter names may not contain dots
        self._names += 1
        if peft is not None:
            peft.load_adapter(adapter, adapter_name=name)
        else:
            bare = self.base.borrow(give_back=self._unwrap)
            peft = self._peft = PeftModel.from_pretrained(bare, adapter, adapter_name=name)
            peft.eval()
        self._loaded[key] = name
        if len(self._loaded) > MAX_LOADED_ADAPTERS:
            peft.delete_adapter(self._loaded.popitem(last=False)[1])
        return peft, name

    def _unwrap(self) -> None:
        """Give the base back without LoRA layers (training is about to borrow it)."""
        peft, self._peft = self._peft, None
        assert peft is not None  # the give-back of the borrow that wrapped it
        bare = peft.unload()
        self._loaded.clear()
        self.base.returned(bare)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row of [n, V] logits: [n]."""
    log_p, log_q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def weights_changed(before: Path | None, after: Path) -> bool:
    """Whether `after` holds different LoRA weights than `before`. Against no adapter at all,
    whether `after` changes the model: a LoRA whose B factors are all zero does not."""
    new = load_file(Path(after) / WEIGHTS_FILE)
    if before is None:
        return any(bool(t.any()) for key, t in new.items() if ".lora_B." in key)
    old = load_file(Path(before) / WEIGHTS_FILE)
    return old.keys() != new.keys() or any(not torch.equal(old[k], new[k]) for k in new)
