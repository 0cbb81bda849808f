"""Demo artifacts built offline: a tiny Llama model and random LoRA adapters for it.

Nothing here touches a model hub. The model has a byte-level BPE tokenizer trained on a
built-in corpus, a ChatML chat template, and weights from a short pretraining on generated
sentences (trainer/demo_pretraining.py), so it answers in words; vLLM and transformers both
load it. The same seed always gives byte-identical files, so tests and demos are
reproducible; the pretrained weights are cached per machine (LORALOOP_CACHE_DIR, default
~/.cache/loraloop) because they take a while to make.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"

# ChatML: the assistant turn ends with <|im_end|>, which is also the generation stop token.
# Tools follow the Hermes format (vLLM's `hermes` tool-call parser reads it): the definitions
# in a system turn, each call as <tool_call>{"name": ..., "arguments": {...}}</tool_call>,
# each result in a `tool` turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    '{{ \'Call tools as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n'
    "<tools>\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '</tools><|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<tool_response>' + message['content'] + '</tool_response>' }}"
    "{% else %}{{ message['content'] or '' }}{% endif %}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{{ '<tool_call>{\"name\": ' + (call['function']['name'] | tojson) + ', \"arguments\": ' }}"
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}"
    "{{ '}</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCABULARY_WORDS = (
    "the a an of to and in is it that for on with as was be at by this from or have not are "
    "you we they he she his her their our what which who when where why how can will would "
    "could should may might must do does did done make made take took give gave get got see "
    "saw know knew think thought say said tell told ask asked help answer question model "
    "adapter tenant server request response feedback version train learn better good bad "
    "yes no please thanks hello world data time day year people way thing man woman child "
    "water food house city country number word sentence story book music light night sun "
    "support ticket order refund account password login error retry success failure price "
    "one two three four five six seven eight nine ten first last next new old big small"
).split()


@dataclass(frozen=True)
class DemoModelShape:
    """Dimensions of the generated model. The default is tiny; benchmarks use larger shapes."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    # Large enough that random logits are peaked: greedy decoding then does not hinge on
    # rounding differences between engines' kernels.
    initializer_range: float = 0.2
    # Steps of pretraining on generated sentences; 0 keeps the random weights (the larger
    # shapes that only measure speed).
    pretrain_steps: int = 400


# A second base of the demo family: the default's tokenizer (the same vocabulary size makes the
# same one), another shape and, built with another seed, other weights. What an adapter is
# carried to when its base model is replaced (trainer/transfers/distillation.py); a shorter
# pretraining still makes it answer in words.
SUCCESSOR_SHAPE = DemoModelShape(
    hidden_size=192,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    pretrain_steps=300,
)
# The corpus the tokenizer learns from does not vary with the model's seed: every demo base of
# one vocabulary size shares its tokenizer, as the models of a real family do.
TOKENIZER_CORPUS_SEED = 0


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(VOCABULARY_WORDS, k=rng.randint(4, 16))) + "." for _ in range(lines)
    ]


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(TOKENIZER_CORPUS_SEED), trainer=trainer)
    # Prepend BOS to plain prompts the way Llama tokenizers do.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=IM_END,  # what a chat turn ends with, so generation stops there
        pad_token=PAD,
        additional_special_tokens=[EOS, IM_START],
        chat_template=CHAT_TEMPLATE,
    )
    # Single tokens, as in models trained for tools, but not special: they stay in the text
    # that the tool-call parser reads.
    fast.add_tokens([TOOL_CALL_START, TOOL_CALL_END])
    return fast


def build_demo_model(target: Path, *, seed: int = 0, shape: DemoModelShape | None = None) -> Path:
    """Write a complete model directory to `target` atomically (temp dir, then rename)."""
    shape = shape or DemoModelShape()
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it or choose another directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=target.parent))
    try:
        tokenizer = build_tokenizer(shape.vocab_size)
        tokenizer.save_pretrained(staging)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_key_value_heads,
            max_position_embeddings=shape.max_position_embeddings,
            initializer_range=shape.initializer_range,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            dtype="float32",
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        if shape.pretrain_steps:
            _pretrained(model, tokenizer, seed, shape)
        model.generation_config.do_sample = False
        model.save_pretrained(staging, safe_serialization=True)
        _fsync_tree(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _pretrained(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, seed: int, shape: DemoModelShape
) -> None:
    """Pretrain `model` in place, or load the weights an earlier build on this machine made
    from the same seed, shape and code."""
    from .demo_pretraining import PretrainingRecipe, pretrain

    cached = _weights_cache() / f"{_cache_key(seed, shape)}.safetensors"
    if cached.exists():
        model.load_state_dict(load_file(cached))
        return
    pretrain(
        model,
        tokenizer,
        list(dict.fromkeys(VOCABULARY_WORDS)),
        seed=seed,
        recipe=PretrainingRecipe(steps=shape.pretrain_steps),
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, partial)
    os.replace(partial, cached)  # whole or absent, also for builds running side by side


def _weights_cache() -> Path:
    root = os.environ.get("LORALOOP_CACHE_DIR") or Path.home() / ".cache" / "loraloop"
    return Path(root) / "demo-weights"


def _cache_key(seed: int, shape: DemoModelShape) -> str:
    """Everything the weights depend on, the code that makes them included: a change to the
    corpus or the recipe makes new weights, never reuses stale ones."""
    code = b"".join(
        Path(__file__).with_name(name).read_bytes()
        for name in ("demo_model.py", "demo_pretraining.py")
    )
    facts = {
        "seed": seed,
        "shape": asdict(shape),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "code": hashlib.sha256(code).hexdigest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def build_random_adapter(
    base_model_dir: Path, target: Path, *, seed: int, rank: int = 8, scale: float = 0.5
) -> Path:
    """Write a LoRA adapter with random A and B for the model in `base_model_dir`.

    PEFT initialises B to zero (a no-op adapter); random B makes every adapter change the
    model's output, so tests can tell adapters apart.
    """
    return build_random_adapters(base_model_dir, {Path(target): seed}, rank=rank, scale=scale)[0]


def build_fresh_adapter(base_model_dir: Path, target: Path, *, seed: int, rank: int = 8) -> Path:
    """Write a LoRA adapter as PEFT initialises one for training: random A, zero B. It answers
    exactly as the base model does, and learns from the first step (two near-zero factors
    would leave each other's gradients near zero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _with_lora(base_model_dir, rank)
    model.save_pretrained(target, safe_serialization=True)
    return Path(target)


def _with_lora(base_model_dir: Path, rank: int):
    """The base model with a LoRA of `rank` on the attention projections, as PEFT
    initialises it (random A from torch's generator, zero B)."""
    from peft import LoraConfig, get_peft_model

    base = LlamaForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    return get_peft_model(
        base,
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=list(LORA_TARGET_MODULES),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )


def build_random_adapters(
    base_model_dir: Path, targets: dict[Path, int], *, rank: int = 8, scale: float = 0.5
) -> list[Path]:
    """`build_random_adapter` for many (directory -> seed) at once, loading the base once."""
    model = _with_lora(base_model_dir, rank)
    lora_params = [
        (name, param)
        for name, param in model.named_parameters()
        if "lora_A" in name or "lora_B" in name
    ]
    for target, seed in targets.items():
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, param in lora_params:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
        model.save_pretrained(target, safe_serialization=True)
    return list(targets)
