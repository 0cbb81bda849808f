"""The served base model: where its files are, its identity, and the shapes adapters must fit.

A base is identified by its weights and its tokenizer, not only by its shapes: a same-family
upgrade keeps every shape, and an adapter trained for one must never be applied to the other.
The weight files are hashed once per directory (cached by path, size and modification time);
otherwise only config.json, the safetensors headers and the tokenizer's files are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

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
# Every file that can change the ids a text becomes or the prompt a chat becomes. JSON files
# are hashed in a canonical form, so reformatting them changes nothing.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
_HASH_CHUNK = 16 << 20


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
    fingerprint: str  # sha256 hex over the shapes, the weight files' and the tokenizer's digests
    # sha256 hex over architectures + sorted (tensor name, shape, dtype): what registries
    # stored as a base's fingerprint before weights were part of it (bases.py adopts those).
    shape_fingerprint: str = field(compare=False)
    tokenizer_digest: str = field(compare=False)  # sha256 hex over TOKENIZER_FILES
    # module name -> (out_features, in_features); the fingerprint already covers it.
    linear_shapes: Mapping[str, tuple[int, int]] = field(compare=False, repr=False)
    # What the base computes in; adapters' weights must stay finite in it (see max_gain).
    compute_dtype: torch.dtype = DEFAULT_COMPUTE_DTYPE

    @classmethod
    def load(
        cls,
        model_dir: Path,
        aliases: Iterable[str] = (),
        *,
        dtype: str | None = None,
        digest_cache: Path | None = None,
    ) -> BaseModelInfo:
        """`dtype`: what the server computes in ("float16", ...) when it overrides the
        checkpoint's own dtype; None or "auto" means the checkpoint's. `digest_cache`: a JSON
        file remembering the weight files' digests, so a restart does not hash them again."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        tensors = _base_tensors(model_dir)  # name -> (shape, dtype)
        names = {*aliases, str(model_dir), str(model_dir.resolve()), model_dir.name}
        shapes = _shape_fingerprint(config.get("architectures") or [], tensors)
        weights = _weights_digest(model_dir, digest_cache)
        tokenizer = tokenizer_digest(model_dir)
        identity = json.dumps(
            {"shapes": shapes, "weights": weights, "tokenizer": tokenizer}, separators=(",", ":")
        )
        return cls(
            aliases=frozenset(names),
            fingerprint=hashlib.sha256(identity.encode()).hexdigest(),
            shape_fingerprint=shapes,
            tokenizer_digest=tokenizer,
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


def linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Module name -> (out_features, in_features), from the safetensors headers alone."""
    return _linear_shapes(_base_tensors(Path(model_dir)))


def tokenizer_digest(model_dir: Path) -> str:
    """sha256 hex over the tokenizer's files that exist in `model_dir`, JSON canonicalized."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        content = path.read_bytes()
        if name.endswith(".json"):
            content = json.dumps(
                json.loads(content), sort_keys=True, separators=(",", ":")
            ).encode()
        digest.update(f"{name}:{len(content)}:".encode())
        digest.update(content)
    return digest.hexdigest()


def _weights_digest(model_dir: Path, cache: Path | None) -> str:
    """sha256 hex over every tensor's name and the digest of its bytes, in name order: the
    same weights give the same digest however the checkpoint is sharded."""
    tensors: dict[str, str] = {}
    for shard in _base_shards(model_dir):
        tensors.update(_tensor_digests(model_dir / shard, cache))
    return hashlib.sha256(json.dumps(sorted(tensors.items())).encode()).hexdigest()


def _tensor_digests(path: Path, cache: Path | None) -> dict[str, str]:
    """Tensor name -> sha256 hex of its bytes in one shard, remembered in `cache` by the
    file's path, size and modification time."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    known = _read_cache(cache).get(key, {})
    if known.get("stamp") == stamp:
        return known["tensors"]
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = _read_header(path)
        entries = sorted(
            (entry["data_offsets"], name)
            for name, entry in header.items()
            if name != "__metadata__"
        )
        tensors = {
            name: _region_digest(f, 8 + length + start, end - start)
            for (start, end), name in entries
        }
    if cache is not None:
        _write_cache(cache, {**_read_cache(cache), key: {"stamp": stamp, "tensors": tensors}})
    return tensors


def _region_digest(f: BinaryIO, offset: int, size: int) -> str:
    digest = hashlib.sha256()
    f.seek(offset)
    while size > 0:
        chunk = f.read(min(size, _HASH_CHUNK))
        if not chunk:
            raise ValueError(f"{f.name} ends inside a tensor; the checkpoint is truncated")
        digest.update(chunk)
        size -= len(chunk)
    return digest.hexdigest()


def _read_cache(cache: Path | None) -> dict:
    try:
        known = json.loads(cache.read_text()) if cache is not None else {}
    except (OSError, ValueError):
        return {}  # absent or torn: hashing again is always right
    return known if isinstance(known, dict) else {}


def _write_cache(cache: Path, known: dict) -> None:
    """Temp file and rename: a reader sees the old cache or the new one, never half of one.
    Two processes racing lose an entry at worst, which costs a hash, never a wrong one."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    temp = cache.with_name(f".{cache.name}.{os.getpid()}")
    temp.write_text(json.dumps(known))
    os.replace(temp, cache)


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


def _compute_dtype(
    override: str | None, config: dict, tensors: dict[str, tuple[list[int], str]]
) -> torch.dtype:
    """The override, else the narrowest float dtype among config.json's and the linear
    weights' (a quantized checkpoint names its compute dtype only in config.json)."""
    if override not in (None, "auto"):
        return _float_dtype(override)
    names = {config.get("torch_dtype"), config.get("dtype")}
    names |= {
        FLOAT_DTYPES.get(dtype)
        for name, (shape, dtype) in tensors.items()
        if len(shape) == 2 and _LAYER_MODULE.search(name)
    }
    found = [
        _float_dtype(name)
        for name in names
        if isinstance(name, str) and name in FLOAT_DTYPES.values()
    ]
    return min(found, key=lambda d: torch.finfo(d).max, default=DEFAULT_COMPUTE_DTYPE)


def _float_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"{name!r} is not a float dtype; use one of {', '.join(FLOAT_DTYPES.values())} or auto"
        )
    return dtype


def _shape_fingerprint(architectures: list[str], tensors: dict[str, tuple[list[int], str]]) -> str:
    rows = sorted((name, list(shape), dtype) for name, (shape, dtype) in tensors.items())
    canonical = json.dumps({"architectures": architectures, "tensors": rows}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _linear_shapes(tensors: dict[str, tuple[list[int], str]]) -> dict[str, tuple[int, int]]:
    return {
        name.removesuffix(".weight"): (shape[0], shape[1])
        for name, (shape, _) in tensors.items()
        if name.endswith(".weight") and len(shape) == 2 and _LAYER_MODULE.search(name)
    }
