"""The served base model: where its files are, its identity, and the shapes adapters must fit.

Only config.json and the safetensors headers are read; the weights stay on disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
# The dtype the base computes in when nothing says otherwise: the narrowest range, so the
# weight bound below is the strictest.
DEFAULT_COMPUTE_DTYPE = torch.float16
# The safetensors header is JSON whose length the file declares in its first 8 bytes; a bound
# keeps a hostile length from becoming a huge allocation.
MAX_HEADER_BYTES = 100_000_000
# Decoder-layer weights, the modules vLLM can put LoRA on: "model.layers.0.self_attn.q_proj".
_LAYER_MODULE = re.compile(r"\.layers\.\d+\.")


def local_model_dir(model: str) -> Path:
    """The base model's files on this machine; a hub id is fetched once into the hub cache."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


@dataclass(frozen=True)
class BaseModelInfo:
    """What registration checks adapters against: the served base model's identity and shapes."""

    aliases: frozenset[str]  # names an adapter's base_model_name_or_path may use for this base
    fingerprint: str  # sha256 hex over architectures + sorted (tensor name, shape, dtype)
    # module name -> (out_features, in_features); the fingerprint already covers it.
    linear_shapes: Mapping[str, tuple[int, int]] = field(compare=False, repr=False)
    # What the base computes in; adapters' weights must stay finite in it (see max_gain).
    compute_dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE

    @classmethod
    def load(cls, model_dir: Path, aliases: Iterable[str] = (), *,
             dtype: str | None = None) -> BaseModelInfo:
        """Read config.json and the safetensors headers only; the weights stay on disk.
        `dtype`: what the server computes in ("float16", ...) when it overrides the
        checkpoint's own dtype; None or "auto" means the checkpoint's."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        tensors = _base_tensors(model_dir)  # name -> (shape, dtype)
        names = {*aliases, str(model_dir), str(model_dir.resolve()), model_dir.name}
        return cls(
            aliases=frozenset(names),
            fingerprint=_fingerprint(config.get("architectures") or [], tensors),
            linear_shapes=MappingProxyType(_linear_shapes(tensors)),
            compute_dtype=_compute_dtype(dtype, config, tensors),
        )

    @property
    def max_gain(self) -> float:
        """The largest gain (spectral norm) an adapter may add to any module.

        An adapter adds three linear maps to a module: A (r x in), scale * B (out x r), and
        their product, the update scale * B @ A. A map's gain bounds how much it can enlarge
        an activation. In a decoder layer such gains compound at most three deep (gate_proj
        and up_proj outputs are multiplied, down_proj follows) and the next RMSNorm squares
        the result, so an adapter of gain g can grow a value about g**6-fold. Capping g at
        the eighth root of the dtype's largest finite value keeps g**6 within three quarters
        of the dtype's range (in orders of magnitude) and leaves the last quarter to the base
        model's own activations: 2**16 for float32 and bfloat16, 4 for float16. Trained LoRA
        updates are a small fraction of the base weights (gains around 1 or less), and the
        random demo adapters have gains of about 100, so both pass with room to spare.
        """
        return float(torch.finfo(self.compute_dtype).max) ** (1 / 8)

    @property
    def target_modules(self) -> frozenset[str]:
        return frozenset(name.rsplit(".", 1)[-1] for name in self.linear_shapes)


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


def _compute_dtype(override: str | None, config: dict,
                   tensors: dict[str, tuple[list[int], str]]) -> torch.dtype:
    """The override, else the narrowest float dtype among config.json's and the linear
    weights' (a quantized checkpoint names its compute dtype only in config.json)."""
    if override not in (None, "auto"):
        return _float_dtype(override)
    names = {config.get("torch_dtype"), config.get("dtype")}
    names |= {FLOAT_DTYPES.get(dtype) for name, (shape, dtype) in tensors.items()
              if len(shape) == 2 and _LAYER_MODULE.search(name)}
    found = [_float_dtype(name) for name in names
             if isinstance(name, str) and name in FLOAT_DTYPES.values()]
    return min(found, key=lambda d: torch.finfo(d).max, default=DEFAULT_COMPUTE_DTYPE)


def _float_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name!r} is not a float dtype; use one of "
                         f"{', '.join(FLOAT_DTYPES.values())} or auto")
    return dtype


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
