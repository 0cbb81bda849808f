"""Carrying an adapter to a new base model by distillation, on two real generated bases that
share one tokenizer and nothing else (another shape, other weights).

The teacher is the marker habit (begin every answer with MARKER) taught by DPO on the demo
base; the student is a fresh LoRA on the successor base, distilled on the teacher's own
continuations of questions the bases were pretrained on. On questions it never saw, the
student must begin its answers as the teacher does, which the successor base alone does not.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.names import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE
from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.validation import validate_adapter
from loraloop.serve.cli.demo import MARKER
from loraloop.trainer.demo_model import DemoModelShape, build_demo_model
from loraloop.trainer.evaluate import weights_changed
from loraloop.trainer.rendering import prompt_ids
from loraloop.trainer.transfers.distillation import (
    TokenizerMismatch,
    TransferSettings,
    check_same_tokenizer,
    distill,
    epochs_to_train,
    measure,
    teacher_continuations,
)

from ...oracle_tasks import questions

SETTINGS = TransferSettings(continuation_tokens=16, samples_per_prompt=3, epochs=8)
DISTILL_PROMPTS, UNSEEN_PROMPTS = 48, 16


def chat(message: str) -> StoredPrompt:
    return StoredPrompt.chat([("user", message)])


@pytest.fixture(scope="module")
def prompts() -> tuple[list[StoredPrompt], list[StoredPrompt]]:
    """(distilled on, never seen by the distillation)."""
    seen = questions(DISTILL_PROMPTS, seed=3)
    unseen = questions(UNSEEN_PROMPTS, seed=4, unlike=frozenset(seen))
    return [chat(q) for q in seen], [chat(q) for q in unseen]


@pytest.fixture(scope="module")
def transfer(demo_model, marker_teacher, successor_model, prompts, tmp_path_factory):
    progress: list[dict] = []
    output = tmp_path_factory.mktemp("transfer") / "v1"
    result = distill(
        demo_model,
        marker_teacher,
        successor_model,
        prompts[0],
        SETTINGS,
        output,
        progress=progress.append,
    )
    return output, result, progress


def first_tokens(base: Path, adapter: Path | None, prompts: list[StoredPrompt]) -> list[int]:
    """The greedy first token of each chat answer, with transformers + PEFT."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    firsts = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                prompt.template_messages(), add_generation_prompt=True, return_dict=True
            )
            firsts.append(int(model(torch.tensor([ids["input_ids"]])).logits[0, -1].argmax()))
    return firsts


def share_equal(ours: list[int], theirs: list[int]) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


# --- Tokenizers ---------------------------------------------------------------------------


def test_bases_of_another_vocabulary_are_refused_before_any_work(
    demo_model, marker_teacher, tmp_path
):
    other = build_demo_model(
        tmp_path / "other",
        shape=DemoModelShape(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            pretrain_steps=0,
        ),
    )
    sizes = [len(AutoTokenizer.from_pretrained(base)) for base in (demo_model, other)]
    assert sizes[0] != sizes[1]
    with pytest.raises(
        TokenizerMismatch,
        match=rf"^the bases do not share a tokenizer: vocabulary {sizes[0]} vs "
        rf"{sizes[1]} tokens; \d+ tokens have another id or none",
    ):
        distill(
            demo_model, marker_teacher, other, [chat("hi"), chat("bye")], SETTINGS, tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def test_another_end_token_and_chat_template_are_named(demo_model, tmp_path):
    copy = Path(shutil.copytree(demo_model, tmp_path / "copy"))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eos|>"}))
    template = (copy / "chat_template.jinja").read_text()
    (copy / "chat_template.jinja").write_text(template.replace("assistant", "bot"))
    with pytest.raises(TokenizerMismatch) as refused:
        check_same_tokenizer(demo_model, copy)
    message = str(refused.value)
    assert "special token eos_token '<|im_end|>' vs '<|eos|>'" in message
    assert "the chat templates differ" in message
    assert "vocabulary" not in message and "another id" not in message
    assert isinstance(refused.value, ValueError)


def refusal(teacher_base: Path, student_base: Path) -> str:
    with pytest.raises(TokenizerMismatch) as refused:
        check_same_tokenizer(teacher_base, student_base)
    return str(refused.value)


def _with_tokenizer_json(demo_model: Path, target: Path, change) -> Path:
    copy = Path(shutil.copytree(demo_model, target))
    saved = json.loads((copy / "tokenizer.json").read_text())
    change(saved)
    (copy / "tokenizer.json").write_text(json.dumps(saved))
    return copy


def test_a_prefix_space_in_the_pre_tokenizer_is_named(demo_model, tmp_path):
    """Same vocabulary, same special tokens, same template: other ids for the same text."""
    copy = _with_tokenizer_json(
        demo_model,
        tmp_path / "copy",
        lambda saved: saved["pre_tokenizer"].update(add_prefix_space=True),
    )
    message = refusal(demo_model, copy)
    assert "the pre-tokenizers differ" in message
    assert "'hello world' encodes to" in message
    assert "vocabulary" not in message and "another id" not in message


def test_other_merges_and_normalizer_are_named(demo_model, tmp_path):
    def change(saved: dict) -> None:
        saved["model"]["merges"] = saved["model"]["merges"][::-1]
        saved["normalizer"] = {"type": "Lowercase"}

    message = refusal(demo_model, _with_tokenizer_json(demo_model, tmp_path / "copy", change))
    assert "the merges differ" in message and "the normalizers differ" in message


def test_bases_of_one_family_pass(demo_model, successor_model):
    check_same_tokenizer(demo_model, successor_model)


# --- The teacher's continuations and the figures along them ------------------------------


def test_teacher_continuations_are_greedy_then_sampled_and_end_after_a_stop(
    demo_model, marker_teacher, prompts
):
    settings = TransferSettings(continuation_tokens=12, samples_per_prompt=3, seed=5)
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, marker_teacher).eval()
    few, per_prompt, stop = prompts[1][:3], 4, tokenizer.eos_token_id

    rows = teacher_continuations(model, tokenizer, few, settings)

    assert [ids for ids, _ in rows] == [
        tuple(prompt_ids(tokenizer, p)) for p in few for _ in range(per_prompt)
    ]
    for _, tokens in rows:  # cut after the first stop token, else at the most tokens
        assert stop not in tokens[:-1] and (tokens[-1] == stop or len(tokens) == 12), tokens
    with torch.no_grad():  # each prompt's first row is the teacher's greedy answer
        for ids, tokens in rows[::per_prompt]:
            logits = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1]
            assert tuple(logits.argmax(-1).tolist()) == tokens
    assert len({tokens for _, tokens in rows}) > len(few)  # the others are drawn
    # Each prompt's draws are its own: the last prompt alone, at its index, draws the same.
    assert (
        teacher_continuations(model, tokenizer, few[2:], settings, first_index=2)
        == (rows[2 * per_prompt :])
    )


class _TableModel(torch.nn.Module):
    """Logits looked up by the current token: row t of `table` after token t ([V, V + extra])."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def test_measure_follows_the_teacher_along_its_continuations():
    vocab = 4
    # The teacher is sure of token t + 1 after t; two columns past the vocabulary are larger
    # still and must be ignored. The student is uniform over the vocabulary.
    teacher = torch.full((vocab, vocab + 2), 0.0)
    teacher[torch.arange(vocab), (torch.arange(vocab) + 1) % vocab] = 3.0
    teacher[:, vocab:] = 9.0
    student = torch.zeros((vocab, vocab + 2))
    rows = [((0, 1), (2, 3)), ((3,), (0,)), ((1,), (2, 3, 0))]  # 6 continuation positions

    # Batches of 2 rows: the figures add up over batches of other lengths.
    same = measure(_TableModel(teacher), _TableModel(teacher), rows, vocab=vocab, batch_size=2)
    assert (same.mean_kl, same.agreement, same.positions) == (pytest.approx(0.0), 1.0, 6)

    uniform = measure(_TableModel(teacher), _TableModel(student), rows, vocab=vocab, batch_size=2)
    p = teacher[0, :vocab].softmax(-1)
    assert uniform.mean_kl == pytest.approx(float((p * p.log()).sum()) + math.log(vocab))
    # The uniform student's top token is 0, the teacher's after token 3 (the positions
    # predicting 0: after the prompt (3,) and after 3 in the last row).
    assert uniform.agreement == pytest.approx(2 / 6)


# --- The marker habit, carried over -------------------------------------------------------


def test_the_habit_carries_to_the_new_base_on_unseen_prompts(
    demo_model, successor_model, marker_teacher, prompts, transfer
):
    output, _, _ = transfer
    unseen = prompts[1]
    marker = AutoTokenizer.from_pretrained(demo_model).convert_tokens_to_ids(MARKER)
    taught = first_tokens(demo_model, marker_teacher, unseen)
    assert share_equal(taught, [marker] * len(unseen)) >= 0.75  # the teacher has the habit
    carried = first_tokens(successor_model, output, unseen)
    untouched = first_tokens(successor_model, None, unseen)
    assert share_equal(carried, taught) >= 0.75, (carried, taught)
    assert share_equal(untouched, taught) <= 0.25, (untouched, taught)


def test_gate_figures_favour_the_transferred_adapter_over_a_fresh_lora(transfer):
    _, result, _ = transfer
    transferred, fresh = result.transferred, result.untrained
    assert transferred.positions == fresh.positions > 0
    assert transferred.agreement >= fresh.agreement + 0.15, result
    assert transferred.mean_kl <= 0.5 * fresh.mean_kl, result
    assert (result.train_prompts, result.held_out_prompts) == (36, 12)
    json.dumps(asdict(result), allow_nan=False)  # recordable as it is


def test_few_prompts_train_more_epochs_up_to_min_steps():
    settings = TransferSettings(epochs=6, batch_size=16, min_steps=100)
    assert epochs_to_train(40, settings) == 34  # 3 steps an epoch
    assert epochs_to_train(1000, settings) == 6  # 63 steps an epoch: the epochs suffice
    assert epochs_to_train(40, TransferSettings(epochs=0)) == 0  # untrained stays untrained
    assert epochs_to_train(40, TransferSettings(min_steps=0)) == 6


def test_progress_is_reported_every_step(transfer):
    _, result, progress = transfer
    continuations = result.train_prompts * (1 + SETTINGS.samples_per_prompt)
    steps_per_epoch = -(-continuations // SETTINGS.batch_size)
    epochs = epochs_to_train(continuations, SETTINGS)
    assert epochs > SETTINGS.epochs  # 8 epochs of 9 steps are short of min_steps
    assert result.steps == len(progress) == epochs * steps_per_epoch >= SETTINGS.min_steps
    assert [p["step"] for p in progress] == list(range(1, result.steps + 1))
    assert set(progress[0]) == {"step", "loss", "epoch"}
    assert progress[-1]["epoch"] == epochs
    assert result.final_loss == progress[-1]["loss"] < 0.5 * progress[0]["loss"]


# --- The artifact ---------------------------------------------------------------------------


def test_output_is_exactly_a_valid_adapter_for_the_new_base(successor_model, transfer):
    output, _, _ = transfer
    assert sorted(path.name for path in output.iterdir()) == sorted(ADAPTER_FILES)
    config = json.loads((output / CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(successor_model)
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    facts = validate_adapter(
        {name: output / name for name in ADAPTER_FILES},
        BaseModelInfo.load(successor_model),
        max_rank=64,
        max_bytes=1 << 30,
    )
    assert facts.rank == SETTINGS.rank
    assert weights_changed(None, output)


def test_same_seed_same_bytes_and_zero_epochs_keep_the_fresh_lora(
    demo_model, marker_teacher, successor_model, prompts, tmp_path
):
    few = prompts[0][:6]
    quick = TransferSettings(continuation_tokens=6, samples_per_prompt=1, epochs=1)
    runs = {
        "once": quick,
        "again": quick,
        "reseeded": TransferSettings(continuation_tokens=6, samples_per_prompt=1, epochs=1, seed=1),
        "untrained": TransferSettings(continuation_tokens=6, samples_per_prompt=1, epochs=0),
    }
    results = {
        name: distill(demo_model, marker_teacher, successor_model, few, settings, tmp_path / name)
        for name, settings in runs.items()
    }
    weights = {name: (tmp_path / name / WEIGHTS_FILE).read_bytes() for name in runs}
    assert weights["once"] == weights["again"] != weights["reseeded"]
    assert results["once"].transferred == results["again"].transferred
    untrained = results["untrained"]
    assert untrained.steps == 0 and untrained.transferred == untrained.untrained
    assert not weights_changed(None, tmp_path / "untrained")  # B is still zero
