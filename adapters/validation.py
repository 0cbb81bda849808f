"""Validation of an uploaded LoRA adapter, before anything about it is stored.

The adapter is checked against the served base model's shapes, so an adapter that passes here
loads in the engine. Every problem is collected and reported at once, each saying how to fix
it. Nothing is unpickled or executed: only a JSON config and a safetensors file are read, and
files with any other name are never opened. Messages echo at most a short, escaped piece of
what the client sent and never a server path.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeGuard

import torch
from safetensors import SafetensorError, safe_open

from .base_model import FLOAT_DTYPES, MAX_HEADER_BYTES, BaseModelInfo
from .errors import AdapterInvalid
from .names import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE

# Formats that torch.load unpickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_PROBLEMS = 20
MAX_ECHO_CHARS = 80
# A LoRA config is a few hundred bytes; anything near this is not one.
MAX_CONFIG_BYTES = 1 << 20
MAX_BASE_NAME_CHARS = 512

# PEFT's saved key for one LoRA factor: base_model.model.<module>.lora_A.weight
_LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight")
_SAVE_HINT = "save it with PEFT's save_pretrained(..., safe_serialization=True)"

# adapter_config.json features that vLLM refuses to load (vllm/lora/peft_helper.py,
# PEFTHelper._validate_features and validate_legal) or that this server does not serve: any
# value that is true for Python refuses the adapter, as vLLM reads them.
_UNSUPPORTED_FEATURES = {
    "use_dora": "use_dora is true; DoRA adapters are not served, train with use_dora=False",
    "modules_to_save": "modules_to_save is not empty; only LoRA factors are served, not full "
    "copies of base modules, so train with modules_to_save=None",
    "rank_pattern": "rank_pattern is not empty; every module must share one r and lora_alpha, "
    "so train without rank_pattern",
    "alpha_pattern": "alpha_pattern is not empty; every module must share one r and "
    "lora_alpha, so train without alpha_pattern",
    "lora_bias": "lora_bias is true; LoRA bias vectors are not served, train with lora_bias=False",
    "use_qalora": "use_qalora is true; QALoRA adapters are not served, train with use_qalora=False",
    "use_bdlora": "use_bdlora is set; block-diagonal LoRA is not served, train without it",
    "alora_invocation_tokens": "alora_invocation_tokens is set; Activated LoRA (aLoRA) is not "
    "served, train without alora_invocation_tokens",
    "layer_replication": "layer_replication is set; adapters that replicate base layers are "
    "not served, train without layer_replication",
}
# init_lora_weights values that only choose the adapter's starting weights; the others
# (PiSSA, OLoRA, CorDA, LoftQ) also rewrite the base model's weights, which are not served.
_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


@dataclass(frozen=True)
class AdapterFacts:
    """What the registry records about a valid adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]  # sorted
    size_bytes: int  # both files together
    base_model_name_or_path: str | None


def validate_adapter(
    files: Mapping[str, Path],
    base: BaseModelInfo,
    *,
    max_rank: int,
    max_bytes: int,
    base_model_override: bool = False,
) -> AdapterFacts:
    """Check an upload (client's file name -> local file) and describe it, or raise
    AdapterInvalid listing every problem found."""
    problems: list[str] = []
    present = _check_file_names(files, problems)
    size = _check_size(present, max_bytes, problems)
    config = None
    if CONFIG_FILE in present:
        config = _check_config(present[CONFIG_FILE], base, max_rank, base_model_override, problems)
    if WEIGHTS_FILE in present and size <= max_bytes:
        _check_weights(present[WEIGHTS_FILE], base, config or _LoraSettings(), problems)
    if problems:
        raise AdapterInvalid(_capped(problems))
    # No problems means a sound config, every value present.
    assert config is not None and config.rank is not None and config.alpha is not None
    assert config.targets is not None and config.is_complete()
    return AdapterFacts(
        rank=config.rank,
        alpha=config.alpha,
        target_modules=tuple(sorted(config.targets)),
        size_bytes=size,
        base_model_name_or_path=config.base_name,
    )


# --- File names and sizes ---------------------------------------------------------------------


def _check_file_names(files: Mapping[str, Path], problems: list[str]) -> dict[str, Path]:
    """The two adapter files that were sent; every other name is a problem."""
    for name in files:
        if name not in ADAPTER_FILES:
            problems.append(_file_name_problem(name))
    problems.extend(
        f"{name} is missing; upload {CONFIG_FILE} and {WEIGHTS_FILE} as PEFT saves them"
        for name in ADAPTER_FILES
        if name not in files
    )
    return {name: Path(files[name]) for name in ADAPTER_FILES if name in files}


def _file_name_problem(name: str) -> str:
    # Names are only compared, never joined to a path, so "../x" is refused, not resolved.
    if "/" in name or "\\" in name or ".." in name:
        return f"file name {_echo(name)} is not allowed; send plain file names without paths"
    if name.lower().endswith(PICKLE_SUFFIXES):
        return (
            f"{_echo(name)} was not read: pickle-based formats are never loaded; "
            "save the adapter with safe_serialization=True"
        )
    return f"unexpected file {_echo(name)}; an adapter is exactly {CONFIG_FILE} and {WEIGHTS_FILE}"


def _check_size(present: dict[str, Path], max_bytes: int, problems: list[str]) -> int:
    size = sum(path.stat().st_size for path in present.values())
    if size > max_bytes:
        problems.append(
            f"the adapter is {size} bytes, over this server's limit of {max_bytes} bytes; "
            "train with a smaller rank or fewer target modules"
        )
    return size


# --- adapter_config.json ----------------------------------------------------------------------


@dataclass
class _LoraSettings:
    """The config values the weights are checked against; None where the config is unusable."""

    rank: int | None = None
    alpha: float | None = None
    targets: frozenset[str] | None = None
    base_name: str | None = None
    use_rslora: bool | None = False

    def is_complete(self) -> bool:
        return None not in (self.rank, self.alpha, self.targets, self.use_rslora)

    @property
    def scale(self) -> float | None:
        """What vLLM multiplies B by: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        if self.rank is None or self.alpha is None or self.use_rslora is None:
            return None
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def _check_config(
    path: Path, base: BaseModelInfo, max_rank: int, override: bool, problems: list[str]
) -> _LoraSettings | None:
    config = _load_config(path, problems)
    if config is None:
        return None
    if config.get("peft_type") != "LORA":
        problems.append(
            f"peft_type is {_echo(config.get('peft_type'))}; only LoRA adapters are served "
            '(peft_type "LORA")'
        )
    _check_unsupported_features(config, problems)
    return _LoraSettings(
        rank=_check_rank(config.get("r"), max_rank, problems),
        alpha=_check_alpha(config.get("lora_alpha"), problems),
        targets=_check_targets(config.get("target_modules"), base, problems),
        base_name=_check_base_name(config.get("base_model_name_or_path"), base, override, problems),
        use_rslora=_check_rslora(config.get("use_rslora"), problems),
    )


def _load_config(path: Path, problems: list[str]) -> dict | None:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        problems.append(f"{CONFIG_FILE} is over {MAX_CONFIG_BYTES} bytes; {_SAVE_HINT}")
        return None
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, absurd numbers, nesting
        problems.append(f"{CONFIG_FILE} is not valid JSON ({_echo_error(error)}); {_SAVE_HINT}")
        return None
    if not isinstance(config, dict):
        problems.append(f"{CONFIG_FILE} must hold a JSON object; {_SAVE_HINT}")
        return None
    return config


def _check_unsupported_features(config: dict, problems: list[str]) -> None:
    problems.extend(message for key, message in _UNSUPPORTED_FEATURES.items() if config.get(key))
    bias = config.get("bias", "none")
    if bias != "none":  # vLLM loads only bias "none": it has no place for bias vectors
        problems.append(f'bias is {_echo(bias)}; bias terms are not served, train with bias="none"')
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        problems.append(
            f"init_lora_weights is {_echo(init)}, an init that changes the base model's "
            "weights, which this server does not serve; convert the adapter to a plain LoRA "
            "with PEFT's path_initial_model_for_weight_conversion"
        )


def _check_rslora(use_rslora: object, problems: list[str]) -> bool | None:
    if use_rslora is None or isinstance(use_rslora, bool):
        return bool(use_rslora)
    problems.append(
        f"use_rslora is {_echo(use_rslora)}; it must be true or false, as PEFT saves it"
    )
    return None


def _check_rank(rank: object, max_rank: int, problems: list[str]) -> int | None:
    if not _is_int(rank) or rank <= 0:
        problems.append(f"r is {_echo(rank)}; it must be a positive integer (the LoRA rank)")
        return None
    if rank > max_rank:
        problems.append(
            f"r is {_echo(rank)}, above this server's maximum rank of {max_rank}; "
            f"train with r <= {max_rank}"
        )
    return rank


def _check_alpha(alpha: object, problems: list[str]) -> float | None:
    value = _as_float(alpha)
    if value is None or not math.isfinite(value) or value <= 0:
        problems.append(f"lora_alpha is {_echo(alpha)}; it must be a positive number")
        return None
    return value


def _check_targets(
    targets: object, base: BaseModelInfo, problems: list[str]
) -> frozenset[str] | None:
    if isinstance(targets, str):
        problems.append(
            "target_modules is a string, which PEFT treats as a regular expression (or "
            '\'all-linear\'); list the module names instead, e.g. ["q_proj", "v_proj"]'
        )
        return None
    if not isinstance(targets, list) or not targets:
        problems.append('target_modules must be a non-empty list of module names, e.g. ["q_proj"]')
        return None
    if not all(isinstance(target, str) for target in targets):
        problems.append('target_modules must list module names as strings, e.g. ["q_proj"]')
        return None
    available = ", ".join(sorted(base.target_modules))
    problems.extend(
        f"target module {_echo(target)} is not a linear layer of the base model; "
        f"it has: {available}"
        for target in dict.fromkeys(targets)  # each unknown name once, in the client's order
        if target not in base.target_modules
    )
    return frozenset(targets)


def _check_base_name(
    name: object, base: BaseModelInfo, override: bool, problems: list[str]
) -> str | None:
    if name is not None and not isinstance(name, str):
        problems.append("base_model_name_or_path must be a string naming the base model")
        return None
    if override:
        if name is not None and len(name) > MAX_BASE_NAME_CHARS:
            problems.append(f"base_model_name_or_path is over {MAX_BASE_NAME_CHARS} characters")
        return name
    if name not in base.aliases:
        # The aliases include server paths, so they are not listed back to the client.
        found = "missing" if name is None else f"{_echo(name)}, which names another base model"
        problems.append(
            f"base_model_name_or_path is {found}; train on the base model this server serves, "
            "or ask an operator to register the adapter with the base model override"
        )
    return name


# --- adapter_model.safetensors ----------------------------------------------------------------


def _check_weights(
    path: Path, base: BaseModelInfo, config: _LoraSettings, problems: list[str]
) -> None:
    header_problem = _header_length_problem(path)
    if header_problem:
        problems.append(f"{WEIGHTS_FILE} is corrupt or truncated: {header_problem}")
        return
    try:
        with safe_open(path, framework="pt") as weights:
            _check_tensors(weights, base, config, problems)
    except SafetensorError as error:  # one error type for every kind of damage
        reason = _short(str(error).replace(str(path), WEIGHTS_FILE))
        problems.append(f"{WEIGHTS_FILE} is corrupt or truncated: {reason}")


def _header_length_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size < 8:
        return f"the file is {size} bytes, too short to hold a header"
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
    if length > MAX_HEADER_BYTES or length > size - 8:
        return f"it declares a {length}-byte header in a {size}-byte file"
    return None


def _check_tensors(
    weights: safe_open, base: BaseModelInfo, config: _LoraSettings, problems: list[str]
) -> None:
    keys = weights.keys()
    if not keys:
        problems.append(f"{WEIGHTS_FILE} holds no tensors; {_SAVE_HINT}")
    factors: dict[str, set[str]] = {}  # module -> the factors found for it, {"A", "B"}
    gains = _Gains(base.max_gain, config.scale)
    for key in keys:
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            problems.append(
                f"tensor {_echo(key)} is not a LoRA factor; {WEIGHTS_FILE} may only hold "
                "base_model.model.<module>.lora_A.weight and .lora_B.weight"
            )
            continue
        module, factor = match.group("module"), match.group("factor")
        factors.setdefault(module, set()).add(factor)
        tensor = _check_tensor(weights, key, module, factor, base, config, problems)
        if tensor is not None:
            gains.add(module, factor, tensor)
    problems.extend(_unpaired_factors(factors))
    problems.extend(gains.problems(base.compute_dtype, config))


def _check_tensor(
    weights: safe_open,
    key: str,
    module: str,
    factor: str,
    base: BaseModelInfo,
    config: _LoraSettings,
    problems: list[str],
) -> torch.Tensor | None:
    """The factor, once its layout and values are sound; None after reporting a problem."""
    if module not in base.linear_shapes:
        problems.append(
            f"tensor {_echo(key)} adapts a module that is not a linear layer of the base model; "
            "train against the base model this server serves"
        )
        return None
    kind = module.rsplit(".", 1)[-1]
    if config.targets is not None and kind not in config.targets:
        problems.append(f"tensor {_echo(key)} adapts {kind}, which target_modules does not list")
    tensor_slice = weights.get_slice(key)
    problem = _layout_problem(tensor_slice, factor, base.linear_shapes[module], config.rank)
    tensor = None
    if problem is None:
        tensor = weights.get_tensor(key)  # loaded only once its size is known
        problem = _values_problem(tensor)
    if problem is not None:
        problems.append(f"tensor {_echo(key)} {problem}")
        return None
    return tensor


class _TensorSlice(Protocol):
    """What safetensors' get_slice returns (untyped there), as far as it is read here."""

    def get_dtype(self) -> str: ...

    def get_shape(self) -> list[int]: ...


def _layout_problem(
    tensor_slice: _TensorSlice, factor: str, out_in: tuple[int, int], rank: int | None
) -> str | None:
    """Dtype and shape of one factor: A is (r, in_features), B is (out_features, r)."""
    dtype = tensor_slice.get_dtype()
    if dtype not in FLOAT_DTYPES:
        return f"has dtype {dtype}; LoRA weights must be one of {', '.join(FLOAT_DTYPES.values())}"
    shape = tuple(tensor_slice.get_shape())
    out_features, in_features = out_in
    r = "r" if rank is None else rank  # no usable r in the config: check the base's side only
    expected = (r, in_features) if factor == "A" else (out_features, r)
    if len(shape) != 2 or not all(e in ("r", s) for s, e in zip(shape, expected, strict=True)):
        return f"has shape {shape}, but this base model and r need ({expected[0]}, {expected[1]})"
    return None


def _values_problem(tensor: torch.Tensor) -> str | None:
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        return f"has {bad} non-finite values (NaN or infinity); retrain or fix the weights"
    return None


class _Gains:
    """The largest gain of each map an adapter adds (A, scale * B, scale * B @ A), over all
    modules, against BaseModelInfo.max_gain. Factors are held only until their pair is in."""

    MAPS = (
        ("A", "lora_A"),
        ("sB", "scale * lora_B"),
        ("sBA", "the update scale * lora_B @ lora_A"),
    )

    def __init__(self, bound: float, scale: float | None) -> None:
        self.bound, self.scale = bound, scale
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self.worst: dict[str, tuple[float, str]] = {}  # map -> (gain, module)
        self.over: dict[str, int] = dict.fromkeys([name for name, _ in self.MAPS], 0)

    def add(self, module: str, factor: str, tensor: torch.Tensor) -> None:
        pair = self._pending.setdefault(module, {})
        pair[factor] = tensor
        if self.scale is not None and len(pair) == 2:
            del self._pending[module]
            for name, gain in _module_gains(pair["A"], pair["B"], self.scale).items():
                self._note(name, module, gain)

    def _note(self, name: str, module: str, gain: float) -> None:
        # `not gain <= bound`: a gain that overflowed float64 to inf or NaN is over too.
        self.over[name] += not gain <= self.bound
        if name not in self.worst or not gain <= self.worst[name][0]:
            self.worst[name] = (gain, module)

    def problems(self, dtype: torch.dtype, config: _LoraSettings) -> list[str]:
        dtype_name = str(dtype).removeprefix("torch.")
        return [
            f"{label} has a gain (spectral norm) of {gain:.3g} in module {_echo(module)}"
            f"{_more(self.over[name] - 1)}, above the {self.bound:.3g} that this base "
            f"model's {dtype_name} computation allows ({_scale_text(config)}); lower "
            "lora_alpha or fix the weights: a trained LoRA update is a small fraction of the "
            "base weights"
            for name, label in self.MAPS
            if self.over[name]
            for gain, module in [self.worst[name]]
        ]


def _scale_text(config: _LoraSettings) -> str:
    formula = "lora_alpha / sqrt(r)" if config.use_rslora else "lora_alpha / r"
    return f"scale = {formula} = {config.scale:.3g}"


def _more(count: int) -> str:
    return f" and {count} more modules" if count else ""


def _module_gains(a: torch.Tensor, b: torch.Tensor, scale: float) -> dict[str, float]:
    """Spectral norms of A (r, in), scale * B (out, r) and scale * B @ A (out, in), in
    float64 and without forming B @ A: with A^T = Qa Ra and B = Qb Rb (QR), B @ A has the
    singular values of the r x r matrix Rb @ Ra^T."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    r_a = torch.linalg.qr(a.T, mode="r").R
    r_b = torch.linalg.qr(b, mode="r").R
    norm = torch.linalg.matrix_norm
    return {
        "A": float(norm(r_a, ord=2)),
        "sB": scale * float(norm(r_b, ord=2)),
        "sBA": scale * float(norm(r_b @ r_a.T, ord=2)),
    }


def _unpaired_factors(factors: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, found in factors.items():
        if found == {"A", "B"}:
            continue
        present, missing = ("A", "B") if "A" in found else ("B", "A")
        problems.append(
            f"module {_echo(module)} has lora_{present} but no lora_{missing}; "
            "every module needs both factors"
        )
    return problems


# --- Messages ---------------------------------------------------------------------------------


def _echo(value: object) -> str:
    """A client-sent value, escaped by repr and cut short, safe to put in a message."""
    if value is None or isinstance(value, (str, int, float)):
        return _short(repr(value))
    return "a list" if isinstance(value, list) else "an object"  # containers are not echoed


def _echo_error(error: Exception) -> str:
    return _short(str(error))


def _short(text: str) -> str:
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a rank


def _as_float(value: object) -> float | None:
    if not (_is_int(value) or isinstance(value, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        return None


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
