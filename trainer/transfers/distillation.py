"""Carry an adapter to a new base model by distillation: the teacher (the old base with its
adapter) writes continuations of a tenant's prompts, and a fresh LoRA on the new base (the
student) learns to give the teacher's next-token distributions along them.

Only next-token distributions pass from teacher to student, so the two bases may differ in
every dimension but one: they must share a tokenizer, since distributions over different
vocabularies cannot be compared token by token (`check_same_tokenizer` refuses that first).
The continuations are the teacher's own, sampled at temperature 1 plus its greedy one: the
answers its users see. Prompts go through the renderer the server uses (rendering.py), so
both models see the ids a request produces. Runs in float32 on the CPU; the same inputs and
seed give the same bytes.

`distill` measures with two public functions, so that whoever measures a student elsewhere
(the benchmark, on its own held-out prompts) uses the same definitions:
`teacher_continuations` samples the teacher's continuations of given prompts, and `measure`
compares a student with the teacher along them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from loraloop.adapters.prompts import StoredPrompt

from ..lora import ProgressCallback, fresh_lora, save_adapter
from ..rendering import MAX_PROMPT_TOKENS, prompt_ids, right_padded

# (prompt ids, the teacher's continuation ids, its stop token included when it stopped)
Continuation = tuple[tuple[int, ...], tuple[int, ...]]


class TokenizerMismatch(ValueError):
    """The two bases tokenize differently: the teacher's distributions mean nothing to the
    student."""


@dataclass(frozen=True)
class TransferSettings:
    # Of the distillation loss. 1 matches the teacher's distributions as users sample them;
    # above 1 the softened targets weigh the teacher's ranking of unlikely tokens more.
    temperature: float = 1.0
    continuation_tokens: int = 32  # the most tokens of each teacher continuation
    samples_per_prompt: int = 4  # sampled continuations per prompt, besides the greedy one
    epochs: int = 6
    # A tenant with few prompts makes few batches an epoch: more epochs, until this many steps
    # (a habit taught on 8 prompts carries as well as on 64 given as many steps).
    min_steps: int = 100
    learning_rate: float = 5e-3
    batch_size: int = 16  # continuations per step
    rank: int = 8
    seed: int = 0
    held_out_fraction: float = 0.25  # of the prompts, kept out of training to measure on

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule} (got {getattr(self, name)})"
            for name, rule, ok in (
                ("temperature", "above 0", self.temperature > 0),
                ("continuation_tokens", "at least 1", self.continuation_tokens >= 1),
                ("samples_per_prompt", "at least 0", self.samples_per_prompt >= 0),
                ("epochs", "at least 0", self.epochs >= 0),
                ("min_steps", "at least 0", self.min_steps >= 0),
                ("learning_rate", "above 0", self.learning_rate > 0),
                ("batch_size", "at least 1", self.batch_size >= 1),
                ("rank", "at least 1", self.rank >= 1),
                (
                    "held_out_fraction",
                    "between 0 and 1, both excluded",
                    0 < self.held_out_fraction < 1,
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class TransferFigures:
    """The student against the teacher on the teacher's continuations of held-out prompts."""

    mean_kl: float  # KL(teacher || student) in nats per continuation token, at temperature 1
    agreement: float  # share of continuation positions where both models' top token is one
    positions: int


@dataclass(frozen=True)
class TransferResult:
    transferred: TransferFigures  # the trained student adapter
    untrained: TransferFigures  # the fresh LoRA before training: the new base as it is
    train_prompts: int
    held_out_prompts: int
    steps: int
    final_loss: float  # the distillation loss at the last step; nan with 0 epochs
    seconds: float


def check_same_tokenizer(teacher_base: Path, student_base: Path) -> None:
    """Raise TokenizerMismatch naming every difference between the bases' tokenizers."""
    differences = _tokenizer_differences(
        AutoTokenizer.from_pretrained(teacher_base), AutoTokenizer.from_pretrained(student_base)
    )
    if differences:
        raise TokenizerMismatch(
            f"the bases do not share a tokenizer: {'; '.join(differences)}. An adapter can "
            "only be distilled between bases of one tokenizer; retrain it on the new base "
            "from its feedback instead"
        )


def _tokenizer_differences(teacher, student) -> list[str]:
    """Each difference as the teacher's, then the student's: the vocabulary, then every part
    of the fast tokenizer's pipeline, the special tokens, the chat template, and last what
    the fixed texts encode to (which catches what a part's description does not show)."""
    differences = []
    if len(teacher) != len(student):
        differences.append(f"vocabulary {len(teacher)} vs {len(student)} tokens")
    ids, other_ids = teacher.get_vocab(), student.get_vocab()
    moved = sorted(
        (
            token
            for token in ids.keys() | other_ids.keys()
            if ids.get(token) != other_ids.get(token)
        ),
        key=lambda token: (ids.get(token, len(ids)), token),
    )
    if moved:
        first = moved[0]
        differences.append(
            f"{len(moved)} tokens have another id or none, e.g. {first!r} "
            f"({ids.get(first, 'absent')} vs {other_ids.get(first, 'absent')})"
        )
    differences += _pipeline_differences(teacher, student)
    differences += _special_token_differences(teacher, student)
    if teacher.chat_template != student.chat_template:
        differences.append("the chat templates differ")
    differences += _encoding_differences(teacher, student)
    return differences


# Texts whose ids show a pipeline difference: leading and doubled spaces, case, accents and
# compatibility forms (normalizers), digits and punctuation (pre-tokenizers), code, newlines.
PROBE_TEXTS = (
    "hello world",
    " hello world",
    "Hello  World!",
    "  leading spaces",
    "trailing space ",
    "numbers 12345 and 3.14",
    "caf\u00e9 na\u00efve \ufb01ne \u00bd",
    "UPPER lower MiXeD",
    "def f(x):\n    return x * 2\n",
    "line one\nline two\r\n\ttabbed",
    "emoji \U0001f600 and \u4e2d\u6587",
    'it\'s "quoted" (parenthesized) [bracketed]',
)
# The parts of a fast tokenizer's saved form that decide the ids, by their names there.
_PIPELINE = {
    "normalizer": "normalizer",
    "pre_tokenizer": "pre-tokenizer",
    "post_processor": "post-processor",
    "added_tokens": "added tokens",
}


def _pipeline_differences(teacher, student) -> list[str]:
    mine, theirs = _saved_form(teacher), _saved_form(student)
    if mine is None or theirs is None:
        return []  # slow tokenizers: the probe texts below still compare them
    differences = [
        f"the {label}s differ"
        for part, label in _PIPELINE.items()
        if mine.get(part) != theirs.get(part)
    ]
    model, other_model = mine.get("model") or {}, theirs.get("model") or {}
    if model.get("type") != other_model.get("type"):
        differences.append(f"tokenizer model {model.get('type')} vs {other_model.get('type')}")
    elif model.get("merges") != other_model.get("merges"):
        differences.append("the merges differ")
    return differences


def _saved_form(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _encoding_differences(teacher, student) -> list[str]:
    for text in PROBE_TEXTS:
        mine, theirs = teacher.encode(text), student.encode(text)
        if mine != theirs:
            return [f"{text!r} encodes to {mine[:8]} vs {theirs[:8]}"]
    return []


def _special_token_differences(teacher, student) -> list[str]:
    """Roles (bos, eos: where generation stops, pad) first, then which tokens are special
    at all (what decoding for users leaves out)."""
    roles, other_roles = teacher.special_tokens_map, student.special_tokens_map
    differences = [
        f"special token {role} {roles.get(role)!r} vs {other_roles.get(role)!r}"
        for role in sorted(roles.keys() | other_roles.keys())
        if roles.get(role) != other_roles.get(role)
    ]
    special, other_special = set(teacher.all_special_tokens), set(student.all_special_tokens)
    for side, only in (("teacher", special - other_special), ("student", other_special - special)):
        if only:
            listed = ", ".join(map(repr, sorted(only)))
            differences.append(f"special only in the {side}'s tokenizer: {listed}")
    return differences


def distill(
    teacher_base: Path,
    teacher_adapter_dir: Path,
    student_base: Path,
    prompts: Sequence[StoredPrompt],
    settings: TransferSettings,
    out_dir: Path,
    progress: ProgressCallback | None = None,
) -> TransferResult:
    """Train a fresh LoRA on `student_base` to answer `prompts` as `teacher_adapter_dir` does
    on `teacher_base`; write adapter_config.json (naming `student_base`) and
    adapter_model.safetensors, nothing else, into `out_dir`."""
    started = time.monotonic()
    check_same_tokenizer(teacher_base, student_base)
    tokenizer = AutoTokenizer.from_pretrained(student_base)
    train, held_out = _split(list(dict.fromkeys(prompts)), settings)
    teacher = _frozen(PeftModel.from_pretrained(_load(teacher_base), teacher_adapter_dir))
    with torch.random.fork_rng(devices=[]):  # seeds the LoRA's A factors, leaks nothing
        torch.manual_seed(settings.seed)
        student = fresh_lora(_load(student_base), settings.rank)
    vocab = len(tokenizer)
    train_rows = teacher_continuations(teacher, tokenizer, train, settings)
    held_rows = teacher_continuations(
        teacher, tokenizer, held_out, settings, first_index=len(train)
    )
    untrained = measure(teacher, student, held_rows, vocab=vocab, batch_size=settings.batch_size)
    steps, loss = _train(
        _TeacherAndStudent(teacher, student, vocab), train_rows, settings, progress
    )
    transferred = measure(teacher, student, held_rows, vocab=vocab, batch_size=settings.batch_size)
    save_adapter(student, Path(student_base), Path(out_dir))
    return TransferResult(
        transferred, untrained, len(train), len(held_out), steps, loss, time.monotonic() - started
    )


def _load(base: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _split(prompts: list[StoredPrompt], settings: TransferSettings):
    """(train, held_out), whole prompts on each side, at least one on each."""
    if len(prompts) < 2:
        raise ValueError(
            "distill needs at least two distinct prompts: some to learn from "
            "and some held out to measure the transfer on"
        )
    order = list(prompts)
    random.Random(settings.seed).shuffle(order)
    held = held_out_count(len(order), settings.held_out_fraction)
    return order[held:], order[:held]


def held_out_count(prompts: int, fraction: float) -> int:
    """How many of `prompts` distinct prompts are kept out of training: at least one, and
    at least one left to learn from."""
    return min(prompts - 1, max(1, round(fraction * prompts)))


# --- The teacher's continuations ---------------------------------------------------------


@torch.no_grad()
def teacher_continuations(
    teacher: torch.nn.Module,
    tokenizer,
    prompts: Sequence[StoredPrompt],
    settings: TransferSettings,
    first_index: int = 0,
) -> list[Continuation]:
    """Per prompt, rendered as the server renders it, the teacher's greedy continuation and
    `settings.samples_per_prompt` sampled at temperature 1, each of up to
    `settings.continuation_tokens` tokens: 1 + samples_per_prompt rows a prompt, in order.
    Prompt i's draws come from a generator seeded by (settings.seed, first_index + i),
    independent of the other prompts'."""
    generation = teacher.generation_config
    if not isinstance(generation, GenerationConfig):
        raise TypeError(
            f"{type(teacher).__name__} is not a transformers model (no generation config)"
        )
    eos = generation.eos_token_id
    stop_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    rows = []
    for index, prompt in enumerate(prompts, start=first_index):
        ids = tuple(prompt_ids(tokenizer, prompt)[-MAX_PROMPT_TOKENS:])
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + index)
        rows += [
            (ids, tokens)
            for tokens in _decode(
                teacher,
                ids,
                1 + settings.samples_per_prompt,
                settings.continuation_tokens,
                generator,
                stop_ids,
            )
        ]
    return rows


def _decode(
    model,
    prompt: tuple[int, ...],
    count: int,
    max_tokens: int,
    generator: torch.Generator,
    stop_ids: set[int],
) -> list[tuple[int, ...]]:
    """`count` continuations of one prompt decoded side by side: row 0 greedy, the others
    sampled at temperature 1. Each ends after its first stop token."""
    input_ids, past = torch.tensor([prompt] * count), None
    tokens: list[list[int]] = [[] for _ in range(count)]
    stopped = [False] * count
    for _ in range(max_tokens):
        out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        chosen = _next_tokens(out.logits[:, -1].float(), generator)  # [count]
        for row, token in enumerate(chosen.tolist()):
            if not stopped[row]:
                tokens[row].append(token)
                stopped[row] = token in stop_ids
        if all(stopped):
            break
        input_ids = chosen.unsqueeze(-1)  # rows that stopped decode on, unread
    return [tuple(row) for row in tokens]


def _next_tokens(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Row 0's argmax, then a draw from each other row's distribution: [rows]."""
    greedy = logits[:1].argmax(-1)
    if len(logits) == 1:
        return greedy
    sampled = torch.multinomial(logits[1:].softmax(-1), 1, generator=generator).squeeze(-1)
    return torch.cat([greedy, sampled])


# --- Training and measuring ----------------------------------------------------------------


@dataclass(frozen=True)
class _TeacherAndStudent:
    teacher: torch.nn.Module
    student: torch.nn.Module  # a PeftModel while training
    # Logits past the tokenizer's length belong to no token (bases of one family may pad
    # their embeddings to different sizes): both models are compared on the tokenizer's ids.
    vocab: int

    def logits(self, model, batch: list[Continuation]) -> torch.Tensor:
        """The logits that predict each continuation token, batch rows one after another:
        [positions, vocab]."""
        input_ids, attention, is_answer = right_padded(batch)  # each [N, T]
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        # Position t predicts token t + 1: those before a continuation token.
        return logits[:, :-1, : self.vocab].float()[is_answer[:, 1:].bool()]

    def loss(self, batch: list[Continuation], temperature: float) -> torch.Tensor:
        """KL(teacher || student) per token at `temperature`, times its square so that the
        gradients keep their size whatever the temperature."""
        with torch.no_grad():
            target = (self.logits(self.teacher, batch) / temperature).log_softmax(-1)
        student = (self.logits(self.student, batch) / temperature).log_softmax(-1)
        return _kl_sum(target, student) / len(target) * temperature**2


@torch.no_grad()
def measure(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    rows: list[Continuation],
    *,
    vocab: int,
    batch_size: int,
) -> TransferFigures:
    """The student against the teacher at every continuation position of `rows` (from
    `teacher_continuations`), at temperature 1, on the first `vocab` logits (the tokenizer's
    ids), `batch_size` rows a forward pass."""
    models = _TeacherAndStudent(teacher, student, vocab)
    kl, agreed, positions = 0.0, 0, 0
    for batch in _batches(rows, batch_size):
        target = models.logits(teacher, batch).log_softmax(-1)
        ours = models.logits(student, batch).log_softmax(-1)
        kl += float(_kl_sum(target, ours))
        agreed += int((target.argmax(-1) == ours.argmax(-1)).sum())
        positions += len(target)
    return TransferFigures(kl / positions, agreed / positions, positions)


def _kl_sum(target_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Sum over rows of KL(target || student), from [n, V] log-probabilities."""
    return F.kl_div(student_logp, target_logp, log_target=True, reduction="sum")


def _train(
    models: _TeacherAndStudent,
    rows: list[Continuation],
    settings: TransferSettings,
    progress: ProgressCallback | None,
) -> tuple[int, float]:
    """AdamW with a linear decay to zero over all steps; (steps, the last step's loss)."""
    trainable = [p for p in models.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    epochs = epochs_to_train(len(rows), settings)
    # At least 1: LambdaLR evaluates the factor once as it is made, with 0 epochs too.
    total = max(1, epochs * -(-len(rows) // settings.batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    rng, step, loss = random.Random(settings.seed), 0, float("nan")
    models.student.train()
    for epoch in range(epochs):
        order = list(rows)
        rng.shuffle(order)
        for batch in _batches(order, settings.batch_size):
            batch_loss = models.loss(batch, settings.temperature)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step, loss = step + 1, batch_loss.item()
            if progress is not None:
                progress({"step": step, "loss": loss, "epoch": epoch + 1})
    models.student.eval()
    return step, loss


def epochs_to_train(rows: int, settings: TransferSettings) -> int:
    """The settings' epochs, or more to make `min_steps` (none when epochs is 0)."""
    if settings.epochs == 0:
        return 0
    per_epoch = -(-rows // settings.batch_size)
    return max(settings.epochs, -(-settings.min_steps // per_epoch))


def _batches(rows: list[Continuation], size: int):
    return (rows[start : start + size] for start in range(0, len(rows), size))
