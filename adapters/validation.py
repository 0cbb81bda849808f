"""Validation of an uploaded LoRA adapter, before anything about it is stored.

The adapter is checked against the served base model's shapes, so an adapter that passes here
loads in the engine. Every problem is collected and reported at once, each saying how to fix
it. Nothing is unpickled or executed: only a JSON config and a safetensors file are read, and
files with any other name are never opened. Messages echo at most a short, escaped piece of
what the client sent and never a server path.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors import SafetensorError, safe_open

from .errors import AdapterInvalid
from .names import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE

# Formats that torch.load unpickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

MAX_PROBLEMS = 20
MAX_ECHO_CHARS = 80
# A LoRA config is a few hundred bytes; anything near this is not one.
MAX_CONFIG_BYTES = 1 << 20
# The safetensors header is JSON whose length the file declares in its first 8 bytes; a bound
# keeps a hostile length from becoming a huge allocation.
MAX_HEADER_BYTES = 100_000_000
MAX_BASE_NAME_CHARS = 512

# Decoder-layer weights, the modules vLLM can put LoRA on: "model.layers.0.self_attn.q_proj".
_LAYER_MODULE = re.compile(r"\.layers\.\d+\.")
# PEFT's saved key for one LoRA factor: base_model.model.<module>.lora_A.weight
_LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight")
_SAVE_HINT = "save it with PEFT's save_pretrained(..., safe_serialization=True)"


@dataclass(frozen=True)
class BaseModelInfo:
    """What registration checks adapters against: the served base model's identity and shapes."""

    aliases: frozenset[str]  # names an adapter's base_model_name_or_path may use for this base
    fingerprint: str  # sha256 hex over architectures + sorted (tensor name, shape, dtype)
    # module name -> (out_features, in_features); the fingerprint already covers it.
    linear_shapes: Mapping[str, tuple[int, int]] = field(compare=False, repr=False)

    @classmethod
    def load(cls, model_dir: Path, aliases: Iterable[str] = ()) -> BaseModelInfo:
        """Read config.json and the safetensors headers only; the weights stay on disk."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        tensors = _base_tensors(model_dir)  # name -> (shape, dtype)
        names = {*aliases, str(model_dir), str(model_dir.resolve()), model_dir.name}
        return cls(
            aliases=frozenset(names),
            fingerprint=_fingerprint(config.get("architectures") or [], tensors),
            linear_shapes=MappingProxyType(_linear_shapes(tensors)),
        )

    @property
    def target_modules(self) -> frozenset[str]:
        return frozenset(name.rsplit(".", 1)[-1] for name in self.linear_shapes)


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
    assert config is not None and config.is_complete()  # no problems means a sound config
    return AdapterFacts(
        rank=config.rank,
        alpha=config.alpha,
        target_modules=tuple(sorted(config.targets)),
        size_bytes=size,
        base_model_name_or_path=config.base_name,
    )


# --- Base model -------------------------------------------------------------------------------


def _base_tensors(model_dir: Path) -> dict[str, tuple[list[int], str]]:
    tensors: dict[str, tuple[list[int], str]] = {}
    for shard in _base_shards(model_dir):
        header = _read_header(model_dir / shard)
        tensors.update(
            (name, (entry["shape"], entry["dtype"]))
            for name, entry in header.items()
            if name != "__metadata__"
        )
    return tensors


def _base_shards(model_dir: Path) -> list[str]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (model_dir / "model.safetensors").exists():
        return ["model.safetensors"]
    raise FileNotFoundError(
        f"{model_dir} has neither model.safetensors nor model.safetensors.index.json; "
        "the base model must be saved in safetensors format"
    )


def _read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} declares a {length}-byte header; it is not safetensors")
        return json.loads(f.read(length))


def _fingerprint(architectures: list[str], tensors: dict[str, tuple[list[int], str]]) -> str:
    rows = sorted((name, list(shape), dtype) for name, (shape, dtype) in tensors.items())
    canonical = json.dumps({"architectures": architectures, "tensors": rows}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _linear_shapes(tensors: dict[str, tuple[list[int], str]]) -> dict[str, tuple[int, int]]:
    return {
        name.removesuffix(".weight"): (shape[0], shape[1])
        for name, (shape, _) in tensors.items()
        if name.endswith(".weight") and len(shape) == 2 and _LAYER_MODULE.search(name)
    }


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

    def is_complete(self) -> bool:
        return None not in (self.rank, self.alpha, self.targets)


def _check_config(
    path: Path, base: BaseModelInfo, max_rank: int, override: bool, problems: list[str]
) -> _LoraSettings | None:
    config = _load_config(path, problems)
    if config is None:
        return None
    if config.get("peft_type") != "LORA":
        problems.append(
            f'peft_type is {_echo(config.get("peft_type"))}; only LoRA adapters are served '
            '(peft_type "LORA")'
        )
    _check_unsupported_features(config, problems)
    return _LoraSettings(
        rank=_check_rank(config.get("r"), max_rank, problems),
        alpha=_check_alpha(config.get("lora_alpha"), problems),
        targets=_check_targets(config.get("target_modules"), base, problems),
        base_name=_check_base_name(config.get("base_model_name_or_path"), base, override, problems),
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
    if config.get("use_dora"):
        problems.append("use_dora is true; DoRA adapters are not served, train with use_dora=False")
    if config.get("modules_to_save"):
        problems.append(
            "modules_to_save is not empty; only LoRA factors are served, not full copies of "
            "base modules, so train with modules_to_save=None"
        )
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(
                f"{key} is not empty; every module must share one r and lora_alpha, "
                f"so train without {key}"
            )


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
            "'all-linear'); list the module names instead, e.g. [\"q_proj\", \"v_proj\"]"
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
        _check_tensor(weights, key, module, factor, base, config, problems)
    problems.extend(_unpaired_factors(factors))


def _check_tensor(
    weights: safe_open,
    key: str,
    module: str,
    factor: str,
    base: BaseModelInfo,
    config: _LoraSettings,
    problems: list[str],
) -> None:
    if module not in base.linear_shapes:
        problems.append(
            f"tensor {_echo(key)} adapts a module that is not a linear layer of the base model; "
            "train against the base model this server serves"
        )
        return
    kind = module.rsplit(".", 1)[-1]
    if config.targets is not None and kind not in config.targets:
        problems.append(f"tensor {_echo(key)} adapts {kind}, which target_modules does not list")
    tensor_slice = weights.get_slice(key)
    problem = _layout_problem(tensor_slice, factor, base.linear_shapes[module], config.rank)
    if problem is None:
        problem = _values_problem(weights.get_tensor(key))  # loaded only once its size is known
    if problem is not None:
        problems.append(f"tensor {_echo(key)} {problem}")


def _layout_problem(
    tensor_slice, factor: str, out_in: tuple[int, int], rank: int | None
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


def _is_int(value: object) -> bool:
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
