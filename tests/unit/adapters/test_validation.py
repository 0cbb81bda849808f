"""Adapter validation at registration, on real files: a generated base model, PEFT-saved
adapters, and copies of them damaged one way at a time."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from loraloop.adapters.base_model import TOKENIZER_FILES, BaseModelInfo
from loraloop.adapters.errors import AdapterInvalid
from loraloop.adapters.validation import CONFIG_FILE, MAX_PROBLEMS, WEIGHTS_FILE, validate_adapter
from loraloop.trainer.demo_model import DemoModelShape, build_demo_model, build_random_adapter

LIMITS = {"max_rank": 64, "max_bytes": 10_000_000}
Q_PROJ_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("validation-base") / "demo")


@pytest.fixture(scope="module")
def base(base_dir) -> BaseModelInfo:
    return BaseModelInfo.load(base_dir, aliases=["demo"])


@pytest.fixture(scope="module")
def saved_adapter(base_dir, tmp_path_factory) -> Path:
    return build_random_adapter(base_dir, tmp_path_factory.mktemp("validation") / "a", seed=1)


@pytest.fixture
def upload(saved_adapter, tmp_path) -> dict[str, Path]:
    """A fresh copy of the two adapter files, as an upload would hand them over."""
    files = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        files[name] = tmp_path / name
        shutil.copyfile(saved_adapter / name, files[name])
    return files


def problems_of(files: dict[str, Path], base: BaseModelInfo, **limits) -> list[str]:
    with pytest.raises(AdapterInvalid) as refused:
        validate_adapter(files, base, **{**LIMITS, **limits})
    problems = refused.value.problems
    assert refused.value.message == "The adapter was refused: " + "; ".join(problems)
    server_dirs = {str(path.parent) for path in files.values()}
    assert not [p for p in problems if any(d in p for d in server_dirs)], "server path leaked"
    return problems


def has(problems: list[str], text: str) -> bool:
    return any(text in problem for problem in problems)


def edit_config(files: dict[str, Path], **changes) -> None:
    path = files[CONFIG_FILE]
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(files: dict[str, Path], change) -> None:
    tensors = load_file(files[WEIGHTS_FILE])
    change(tensors)
    save_file(tensors, files[WEIGHTS_FILE])


# --- The base model ---------------------------------------------------------------------------


def test_base_model_info_reads_shapes_and_names(base, base_dir):
    assert base.linear_shapes["model.layers.0.self_attn.q_proj"] == (256, 256)
    assert base.linear_shapes["model.layers.1.self_attn.k_proj"] == (128, 256)  # 2 KV heads
    assert base.linear_shapes["model.layers.0.mlp.down_proj"] == (256, 512)
    assert "lm_head" not in base.linear_shapes  # outside the decoder layers
    assert base.target_modules == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert {"demo", str(base_dir), str(base_dir.resolve())} <= base.aliases


def test_fingerprint_is_stable_and_tells_shapes_apart(base, base_dir, tmp_path):
    assert BaseModelInfo.load(base_dir).fingerprint == base.fingerprint
    wider = build_demo_model(tmp_path / "wider", shape=DemoModelShape(intermediate_size=384))
    assert BaseModelInfo.load(wider).fingerprint != base.fingerprint


def test_sharded_checkpoint_reads_like_a_single_file(base, base_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    for name in TOKENIZER_FILES:  # the same base: its weights, in shards, and its tokenizer
        if (base_dir / name).exists():
            shutil.copy(base_dir / name, tmp_path / "sharded" / name)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    sharded = BaseModelInfo.load(tmp_path / "sharded")
    assert sharded.fingerprint == base.fingerprint
    assert sharded.linear_shapes == base.linear_shapes


# --- Accepted adapters ------------------------------------------------------------------------


def test_valid_adapter_passes_with_its_facts(upload, base, base_dir):
    facts = validate_adapter(upload, base, **LIMITS)
    assert facts.rank == 8
    assert facts.alpha == 8.0
    assert facts.target_modules == ("k_proj", "o_proj", "q_proj", "v_proj")
    assert facts.size_bytes == sum(path.stat().st_size for path in upload.values())
    assert facts.base_model_name_or_path == str(base_dir)


def test_base_model_may_be_named_by_an_alias(upload, base):
    edit_config(upload, base_model_name_or_path="demo")
    assert validate_adapter(upload, base, **LIMITS).base_model_name_or_path == "demo"


# --- File names -------------------------------------------------------------------------------


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_file_is_refused_and_never_unpickled(upload, base, tmp_path):
    # The trap is real: unpickling this payload creates its marker file.
    pickle.loads(pickle.dumps(_CreatesFileWhenUnpickled(tmp_path / "control"))).close()
    assert (tmp_path / "control").exists()

    marker = tmp_path / "unpickled"
    (tmp_path / "payload").write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker)))
    upload["adapter_model.bin"] = tmp_path / "payload"
    problems = problems_of(upload, base)
    assert problems == [
        "'adapter_model.bin' was not read: pickle-based formats are never loaded; "
        "save the adapter with safe_serialization=True"
    ]
    assert not marker.exists()


def test_pickle_instead_of_safetensors_is_refused(upload, base, tmp_path):
    (tmp_path / "payload").write_bytes(b"\x80\x04 arbitrary bytes")
    files = {CONFIG_FILE: upload[CONFIG_FILE], "adapter_model.PT": tmp_path / "payload"}
    problems = problems_of(files, base)
    assert has(problems, "pickle-based formats are never loaded")
    assert has(problems, f"{WEIGHTS_FILE} is missing")


def test_missing_config_is_refused(upload, base):
    problems = problems_of({WEIGHTS_FILE: upload[WEIGHTS_FILE]}, base)
    assert problems == [
        f"{CONFIG_FILE} is missing; upload {CONFIG_FILE} and {WEIGHTS_FILE} as PEFT saves them"
    ]


@pytest.mark.parametrize("name", ["../adapter_config.json", "a/b", "x\\y", "README.md"])
def test_other_file_names_are_refused_without_being_used(upload, base, tmp_path, name):
    upload[name] = tmp_path / "never-created"  # a path that is never opened, so need not exist
    problems = problems_of(upload, base)
    assert len(problems) == 1
    assert "not allowed" in problems[0] or "unexpected file" in problems[0]


# --- Size -------------------------------------------------------------------------------------


def test_over_size_cap_is_refused_before_the_weights_are_read(upload, base):
    size = sum(path.stat().st_size for path in upload.values())
    assert validate_adapter(upload, base, **{**LIMITS, "max_bytes": size})
    weights = upload[WEIGHTS_FILE].read_bytes()
    upload[WEIGHTS_FILE].write_bytes(weights[: len(weights) // 2])  # would be reported as corrupt
    problems = problems_of(upload, base, max_bytes=size // 4)
    assert len(problems) == 1
    assert "over this server's limit" in problems[0]


# --- Config -----------------------------------------------------------------------------------


def test_wrong_base_model_is_refused_unless_overridden(upload, base):
    edit_config(upload, base_model_name_or_path="meta-llama/Llama-3.1-8B")
    problems = problems_of(upload, base)
    assert problems == [
        "base_model_name_or_path is 'meta-llama/Llama-3.1-8B', which names another base model; "
        "train on the base model this server serves, or ask an operator to register the adapter "
        "with the base model override"
    ]
    facts = validate_adapter(upload, base, **LIMITS, base_model_override=True)
    assert facts.base_model_name_or_path == "meta-llama/Llama-3.1-8B"


def test_missing_base_model_name_is_refused_unless_overridden(upload, base):
    edit_config(upload, base_model_name_or_path=None)
    assert has(problems_of(upload, base), "base_model_name_or_path is missing;")
    assert validate_adapter(upload, base, **LIMITS, base_model_override=True)


def test_rank_over_the_maximum_is_refused(upload, base):
    problems = problems_of(upload, base, max_rank=4)
    assert problems == ["r is 8, above this server's maximum rank of 4; train with r <= 4"]


def test_unknown_target_module_is_refused(upload, base):
    edit_config(upload, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "nonexistent_proj"])
    problems = problems_of(upload, base)
    assert problems == [
        "target module 'nonexistent_proj' is not a linear layer of the base model; it has: "
        "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"peft_type": "IA3"}, 'only LoRA adapters are served (peft_type "LORA")'),
        ({"r": "8"}, "r is '8'; it must be a positive integer"),
        ({"r": True}, "r is True; it must be a positive integer"),
        ({"lora_alpha": -1}, "lora_alpha is -1; it must be a positive number"),
        ({"lora_alpha": float("nan")}, "lora_alpha is nan"),
        ({"target_modules": "q_proj|v_proj"}, "PEFT treats as a regular expression"),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        ({"use_dora": True}, "DoRA adapters are not served"),
        ({"modules_to_save": ["lm_head"]}, "train with modules_to_save=None"),
        ({"rank_pattern": {"q_proj": 4}}, "train without rank_pattern"),
        ({"alpha_pattern": {"q_proj": 4}}, "train without alpha_pattern"),
        # Every feature vLLM's PEFTHelper refuses at load time (vllm/lora/peft_helper.py).
        ({"bias": "all"}, "bias is 'all'; bias terms are not served"),
        ({"bias": "lora_only"}, "bias is 'lora_only'; bias terms are not served"),
        ({"bias": None}, "bias is None; bias terms are not served"),
        ({"lora_bias": True}, "lora_bias is true; LoRA bias vectors are not served"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights is 'pissa', an init that changes"),
        ({"init_lora_weights": "olora"}, "init_lora_weights is 'olora', an init that changes"),
        ({"init_lora_weights": "corda"}, "init_lora_weights is 'corda', an init that changes"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights is 'loftq', an init that changes"),
        ({"alora_invocation_tokens": [3, 4]}, "Activated LoRA (aLoRA) is not served"),
        ({"layer_replication": [[0, 2], [1, 2]]}, "train without layer_replication"),
        ({"use_bdlora": {"target_modules": ["q_proj"]}}, "block-diagonal LoRA is not served"),
        ({"use_qalora": True}, "QALoRA adapters are not served"),
        ({"use_rslora": "false"}, "use_rslora is 'false'; it must be true or false"),
    ],
)
def test_unsupported_config_is_refused(upload, base, changes, expected):
    edit_config(upload, **changes)
    assert has(problems_of(upload, base), expected)


@pytest.mark.parametrize(
    "changes",
    [
        {"bias": "none", "lora_bias": False, "use_rslora": False, "init_lora_weights": True},
        {"init_lora_weights": "gaussian"},
        {"init_lora_weights": False},
        {"use_rslora": None, "alora_invocation_tokens": None, "layer_replication": None},
    ],
)
def test_plain_lora_settings_are_accepted(upload, base, changes):
    edit_config(upload, **changes)
    assert validate_adapter(upload, base, **LIMITS).rank == 8


def test_config_that_is_not_json_is_refused(upload, base):
    upload[CONFIG_FILE].write_bytes(b"\xff{ not json")
    problems = problems_of(upload, base)
    assert len(problems) == 1
    assert problems[0].startswith(f"{CONFIG_FILE} is not valid JSON")


def test_long_client_text_is_cut_short(upload, base):
    edit_config(upload, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "x" * 10_000])
    (problem,) = problems_of(upload, base)
    assert "xxx..." in problem
    assert len(problem) < 250


# --- Weights ----------------------------------------------------------------------------------


def test_wrong_tensor_shape_is_refused(upload, base):
    edit_weights(upload, lambda t: t.update({Q_PROJ_A: torch.zeros(8, 128)}))
    problems = problems_of(upload, base)
    assert problems == [
        f"tensor '{Q_PROJ_A}' has shape (8, 128), but this base model and r need (8, 256)"
    ]


def test_tensor_for_a_module_absent_from_the_base_is_refused(upload, base):
    absent = "base_model.model.model.layers.5.self_attn.q_proj"  # the base has 2 layers
    edit_weights(
        upload,
        lambda t: t.update(
            {
                f"{absent}.lora_A.weight": torch.zeros(8, 256),
                f"{absent}.lora_B.weight": torch.zeros(256, 8),
            }
        ),
    )
    problems = problems_of(upload, base)
    assert len(problems) == 2
    assert has(problems, "layers.5.self_attn.q_proj.lora_A.weight' adapts a module that is not")


def test_tensor_for_an_untargeted_module_is_refused(upload, base):
    gate = "base_model.model.model.layers.0.mlp.gate_proj"
    edit_weights(
        upload,
        lambda t: t.update(
            {
                f"{gate}.lora_A.weight": torch.zeros(8, 256),
                f"{gate}.lora_B.weight": torch.zeros(512, 8),
            }
        ),
    )
    assert has(problems_of(upload, base), "adapts gate_proj, which target_modules does not list")


def test_unpaired_non_lora_non_float_and_non_finite_tensors_are_refused(upload, base):
    q_proj_b = Q_PROJ_A.replace("lora_A", "lora_B")
    v_proj_a = Q_PROJ_A.replace("q_proj", "v_proj")

    def damage(tensors):
        del tensors[q_proj_b]
        tensors["base_model.model.lm_head.weight"] = torch.zeros(4, 4)
        tensors[v_proj_a] = tensors[v_proj_a].to(torch.int32)
        tensors[Q_PROJ_A][0, 0] = float("nan")

    edit_weights(upload, damage)
    problems = problems_of(upload, base)
    assert has(problems, "self_attn.q_proj' has lora_A but no lora_B")
    assert has(problems, "'base_model.model.lm_head.weight' is not a LoRA factor")
    assert has(problems, "has dtype I32; LoRA weights must be one of float16")
    assert has(problems, "has 1 non-finite values")
    assert len(problems) == 4


# --- Weight magnitudes: what the adapter may add must stay finite in the base's dtype ------


def largest_update_gain(files: dict[str, Path]) -> float:
    """max over modules of the spectral norm of B @ A (scale 1), formed in full: an oracle
    independent of validation's QR shortcut."""
    tensors = load_file(files[WEIGHTS_FILE])
    return max(
        float(
            torch.linalg.matrix_norm(
                tensors[key.replace("lora_A", "lora_B")].double() @ tensors[key].double(), ord=2
            )
        )
        for key in tensors
        if "lora_A" in key
    )


def test_gain_bound_is_the_eighth_root_of_the_dtype_range(base, base_dir):
    assert base.compute_dtype == torch.float32
    assert base.max_gain == pytest.approx(2.0**16)
    assert BaseModelInfo.load(base_dir, dtype="bfloat16").max_gain == pytest.approx(2**16, rel=1e-3)
    assert BaseModelInfo.load(base_dir, dtype="float16").max_gain == pytest.approx(4, rel=1e-4)


def test_demo_adapter_is_far_below_the_gain_bound(upload, base):
    assert largest_update_gain(upload) < base.max_gain / 100


@pytest.mark.parametrize("alpha", [1e30, 1e308])
def test_overflowing_alpha_is_refused(upload, base, alpha):
    edit_config(upload, lora_alpha=alpha)
    problems = problems_of(upload, base)
    assert has(problems, "the update scale * lora_B @ lora_A has a gain (spectral norm) of ")
    assert has(problems, "above the 6.55e+04 that this base model's float32 computation allows")
    assert has(problems, "lower lora_alpha")
    assert has(problems, "in module 'model.layers.")


def test_overflowing_lora_b_is_refused(upload, base):
    edit_weights(
        upload,
        lambda t: t.update({k: torch.full_like(v, 1e30) for k, v in t.items() if "lora_B" in k}),
    )
    problems = problems_of(upload, base)
    assert has(problems, "scale * lora_B has a gain (spectral norm) of ")
    assert has(problems, "and 7 more modules, above the 6.55e+04")


def test_huge_lora_a_is_refused_even_when_b_cancels_it(upload, base):
    # The update B @ A is ordinary, but A alone would overflow the activations it makes.
    def rescale(tensors):
        for key in tensors:
            tensors[key] *= 1e30 if "lora_A" in key else 1e-30

    edit_weights(upload, rescale)
    problems = problems_of(upload, base)
    assert len(problems) == 1
    assert problems[0].startswith("lora_A has a gain (spectral norm) of ")


def test_gain_bound_is_sharp_on_the_scale(upload, base):
    edge_scale = base.max_gain / largest_update_gain(upload)  # r is 8
    edit_config(upload, lora_alpha=8 * edge_scale * 0.99)
    assert validate_adapter(upload, base, **LIMITS)
    edit_config(upload, lora_alpha=8 * edge_scale * 1.01)
    assert has(problems_of(upload, base), "the update scale * lora_B @ lora_A has a gain")


def test_rslora_scale_counts_towards_the_gain(upload, base):
    # alpha / r is within the bound; alpha / sqrt(r), what vLLM uses with rsLoRA, is not.
    edit_config(upload, lora_alpha=8 * 0.5 * base.max_gain / largest_update_gain(upload))
    assert validate_adapter(upload, base, **LIMITS)
    edit_config(upload, use_rslora=True)
    assert has(problems_of(upload, base), "scale = lora_alpha / sqrt(r) = ")


def test_half_precision_base_bounds_gains_tighter(upload, base_dir):
    fp16 = BaseModelInfo.load(base_dir, dtype="float16")
    problems = problems_of(upload, fp16)
    assert has(problems, "above the 4 that this base model's float16 computation allows")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="cut-in-half"),
        pytest.param(lambda data: data[:5], id="shorter-than-a-header"),
        pytest.param(lambda data: b"\xff" * 8 + data[8:], id="absurd-header-length"),
        pytest.param(lambda data: data[:8] + b"{bad" + data[12:], id="header-not-json"),
    ],
)
def test_truncated_or_corrupt_weights_are_refused(upload, base, damage):
    path = upload[WEIGHTS_FILE]
    path.write_bytes(damage(path.read_bytes()))
    problems = problems_of(upload, base)
    assert len(problems) == 1
    assert problems[0].startswith(f"{WEIGHTS_FILE} is corrupt or truncated: ")


def test_empty_weights_are_refused(upload, base):
    save_file({}, upload[WEIGHTS_FILE])
    assert problems_of(upload, base) == [
        f"{WEIGHTS_FILE} holds no tensors; save it with PEFT's "
        "save_pretrained(..., safe_serialization=True)"
    ]


# --- Reporting --------------------------------------------------------------------------------


def test_every_problem_is_listed_at_once(upload, base, tmp_path):
    edit_config(
        upload,
        r=128,
        base_model_name_or_path="other/model",
        use_dora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "nonexistent_proj"],
    )
    upload["../escape"] = tmp_path / "never-created"
    problems = problems_of(upload, base)
    for expected in [
        "file name '../escape' is not allowed",
        "r is 128, above this server's maximum rank of 64",
        "DoRA adapters are not served",
        "target module 'nonexistent_proj' is not a linear layer",
        "base_model_name_or_path is 'other/model'",
        # Every saved tensor is now the wrong shape for the configured rank.
        f"tensor '{Q_PROJ_A}' has shape (8, 256), but this base model and r need (128, 256)",
    ]:
        assert has(problems, expected), expected


def test_problem_list_is_capped(upload, base):
    edit_config(upload, target_modules=[f"missing_{i}" for i in range(MAX_PROBLEMS + 10)])
    problems = problems_of(upload, base)
    assert len(problems) == MAX_PROBLEMS + 1
    # 30 unknown targets, and 16 saved tensors whose modules the config no longer targets.
    assert problems[-1] == f"... and {30 + 16 - MAX_PROBLEMS} more problems"
