"""Hugging Face CLIP checkpoints (safetensors only) <-> deft_jax CLIP parameters.

``load_pretrained`` accepts a local directory (``config.json`` + ``*.safetensors``), a single
``.safetensors`` file, a stand-in shipped with the package (``standin:<name>``, models/standins.py), or a hub
id such as ``openai/clip-vit-base-patch16`` (downloaded with ``huggingface_hub`` when online). Pickled
``pytorch_model.bin`` files are never opened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from deft_jax.models import peft as peft_lib, presets, standins
from deft_jax.models.weights import CheckpointMismatchError, merge_params
from deft_jax.tree import flatten
from deft_jax.errors import ConfigError, MissingFileError

# Buffers that HF state dicts may carry and that are not parameters.
IGNORED_KEYS = (r".*\.position_ids",)
# Parameters that a pretrained CLIP never has: PEFT additions. (Prompt learners live outside the model.)
PEFT_PATTERNS = tuple(f".*/{p}" for p in peft_lib.PARAM_PATTERNS.values())

_HUB_FILES = ["*.safetensors", "*.json", "merges.txt", "vocab.json"]


def resolve_checkpoint(path_or_id: str | Path) -> Path:
  """A local directory or file for a path, a shipped stand-in ("standin:<name>", models/standins.py) or a hub
  id; downloads (safetensors + json only) when needed."""
  if standins.is_standin(path_or_id):
    return standins.path(path_or_id)
  p = Path(path_or_id).expanduser()
  if p.exists():
    return p
  s = str(path_or_id)
  if s.startswith((".", "/", "~")) or s.count("/") != 1:
    raise MissingFileError(f"CLIP checkpoint {s!r} does not exist (and it is not a hub id like "
                            "'openai/clip-vit-base-patch16')")
  try:
    import huggingface_hub
  except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
    raise ImportError("downloading from the hub needs huggingface_hub (pip install huggingface_hub)") from e
  from huggingface_hub import constants, errors as hub_errors  # pylint: disable=g-import-not-at-top
  try:
    return Path(huggingface_hub.snapshot_download(s, allow_patterns=_HUB_FILES))
  except (hub_errors.LocalEntryNotFoundError, OSError) as e:  # offline, or the hub is not reachable
    raise MissingFileError(
        f"CLIP checkpoint {s!r} is neither in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"nor reachable on the hub ({type(e).__name__}). Either set model.checkpoint to a local directory "
        "holding its config.json and *.safetensors (e.g. downloaded elsewhere with `hf download "
        f"{s}`), or set model.checkpoint=pretrain, with 'pretrain' in config.stages and a clean pretraining set "
        "(data.pretrain_root or data.pretrain_file), to pretrain a small CLIP offline") from None
  except hub_errors.HfHubHTTPError as e:  # reachable, but no such repository, gated, ...
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise MissingFileError(f"CLIP checkpoint {s!r}: the Hugging Face hub refused it ({first})") from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory (single or sharded safetensors) or file."""
  from safetensors.numpy import load_file

  path = Path(path)
  if path.is_file():
    files = [path]
  else:
    files = sorted(path.glob("*.safetensors"))
    if not files:
      pickled = [f.name for f in path.glob("*.bin")] + [f.name for f in path.glob("*.pt*")]
      hint = (f" It holds {pickled}: deft_jax never unpickles weights; convert them with "
              "transformers (model.save_pretrained(dir, safe_serialization=True)).") if pickled else ""
      raise MissingFileError(f"no *.safetensors file in {path}.{hint}")
  out: dict[str, np.ndarray] = {}
  for f in files:
    if f.suffix != ".safetensors":
      raise ConfigError(f"{f} is not a .safetensors file; deft_jax loads safetensors only")
    try:
      tensors = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for corrupt headers.
      raise ConfigError(f"cannot read {f}: {e} (corrupt or not a safetensors file?)") from e
    out.update(tensors)
  return out


def _to_flax(key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """One HF ``CLIPModel`` tensor as (deft_jax path, value in deft_jax's layout)."""
  parts = key.split(".")
  if len(parts) > 1 and parts[-2] == "patch_embedding" and parts[-1] == "weight":
    return "/".join(parts[:-1] + ["kernel"]), value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  leaf = parts[-1]
  parent = parts[-2] if len(parts) > 1 else ""
  if parent in ("token_embedding", "position_embedding") and leaf == "weight":
    name = "embedding"
  elif re.search(r"(layer_norm\d|layernorm|layrnorm|final_layer_norm)$", parent) and leaf == "weight":
    name = "scale"
  elif leaf == "weight" and value.ndim == 2:
    name, value = "kernel", value.T
  else:
    name = leaf
  path = [("layers_" + p if i > 0 and parts[i - 1] == "layers" else p) for i, p in enumerate(parts[:-1])]
  path = [p for i, p in enumerate(path) if not (p == "layers" and i + 1 < len(path)
                                                 and path[i + 1].startswith("layers_"))]
  return "/".join(path + [name]), value


def _in_file_layout(key: str, flax_shape: tuple) -> tuple:
  """The shape a tensor of deft_jax shape ``flax_shape`` has in a HF state dict under ``key`` (the inverse of
  the layout change of :func:`_to_flax`), so that a mismatch is reported as the file's reader sees it."""
  parts = key.split(".")
  if len(parts) > 1 and parts[-2] == "patch_embedding" and parts[-1] == "weight" and len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if parts[-1] == "weight" and len(flax_shape) == 2 and parts[-2] not in ("token_embedding", "position_embedding"):
    return tuple(flax_shape[::-1])
  return tuple(flax_shape)


def hf_to_flax(state: Mapping[str, np.ndarray], *, scan: bool = False) -> dict[str, np.ndarray]:
  """Renames (and transposes) a HF ``CLIPModel`` state dict into flat deft_jax paths.

  Keys that do not look like CLIP parameters are kept under their original name, so that the strict merge
  reports them as unexpected.
  """
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    if any(re.fullmatch(p, key) for p in IGNORED_KEYS):
      continue
    value = np.asarray(value)
    if value.dtype not in (np.float32, np.float64):
      value = value.astype(np.float32)  # fp16 / bf16 checkpoints: parameters are fp32 here.
    path, value = _to_flax(key, value)
    out[path] = value
  return stack_layers(out) if scan else out


def _shape_errors(state: Mapping[str, np.ndarray], init_params, scan: bool, source: str) -> list[str]:
  """Every tensor of the file whose shape this model cannot take, in the file's own names and layout."""
  want = flatten(init_params)
  errors = []
  for key, value in state.items():
    path, converted = _to_flax(key, np.asarray(value))
    target = want.get(path)
    if target is None and scan:  # the scanned layout stacks encoder/layers_i/x as encoder/layers/x
      stacked = re.sub(r"/encoder/layers_\d+/", "/encoder/layers/", path)
      target = want.get(stacked)
      want_shape = None if target is None else tuple(target.shape[1:])
    else:
      want_shape = None if target is None else tuple(target.shape)
    if want_shape is not None and tuple(converted.shape) != want_shape:
      errors.append(f"{key}: {source} has {tuple(np.shape(value))}, this model needs "
                    f"{_in_file_layout(key, want_shape)}")
  return errors


def flax_to_hf(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """deft_jax CLIP parameters (unscanned, no PEFT) -> a HF ``CLIPModel`` state dict."""
  out = {}
  for path, value in flatten(params).items():
    if any(re.fullmatch(p, path) for p in PEFT_PATTERNS):
      raise ValueError(f"{path} is a PEFT parameter; HF CLIP has no place for it (merge or drop it first)")
    value = np.asarray(value, np.float32)
    parts = path.split("/")
    parts = [f"layers.{p[len('layers_'):]}" if re.fullmatch(r"layers_\d+", p) else p for p in parts]
    leaf = parts[-1]
    if leaf == "kernel" and parts[-2] == "patch_embedding":
      value, leaf = value.transpose(3, 2, 0, 1), "weight"
    elif leaf == "kernel":
      value, leaf = value.T, "weight"
    elif leaf in ("scale", "embedding"):
      leaf = "weight"
    out[".".join(parts[:-1] + [leaf])] = np.array(value, dtype=np.float32, order="C")  # keeps 0-d
  return out


def stack_layers(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``encoder/layers_{i}/x`` -> ``encoder/layers/x`` stacked on a leading axis (the scan layout)."""
  groups: dict[tuple[str, str], dict[int, np.ndarray]] = {}
  out = {}
  for k, v in flat.items():
    m = re.fullmatch(r"(.*/encoder)/layers_(\d+)/(.*)", k)
    if m:
      groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
    else:
      out[k] = v
  for (prefix, rest), layers in groups.items():
    idx = sorted(layers)
    if idx != list(range(len(idx))):
      raise CheckpointMismatchError(f"{prefix}/layers_*/{rest}: layers {idx} are not 0..{len(idx) - 1}")
    out[f"{prefix}/layers/{rest}"] = np.stack([layers[i] for i in idx])
  return out


def load_pretrained(
    path_or_id: str | Path,
    init_params: Mapping[str, Any],
    *,
    scan: bool = False,
    dont_load: Iterable[str] = PEFT_PATTERNS,
) -> dict:
  """Merges a HF CLIP checkpoint into freshly initialised parameters (strictly; see weights.merge_params). A
  tensor of the wrong shape is reported in the file's own names and layout."""
  ckpt = resolve_checkpoint(path_or_id)
  state = read_safetensors(ckpt)
  errors = _shape_errors(state, init_params, scan, "the file")
  if errors:
    shown = "\n  ".join(sorted(errors)[:40])
    raise CheckpointMismatchError(f"cannot load {path_or_id} into this model (is it a checkpoint of another model "
                                  f"or preset?): {len(errors)} shape mismatch(es), in the file's layout:\n  {shown}")
  return merge_params(init_params, hf_to_flax(state, scan=scan), dont_load=dont_load, source=str(path_or_id))


def config_from_checkpoint(path_or_id: str | Path, **overrides) -> presets.CLIPConfig:
  """The CLIPConfig described by a checkpoint's config.json."""
  ckpt = resolve_checkpoint(path_or_id)
  cfg_dir = ckpt if ckpt.is_dir() else ckpt.parent
  return presets.from_hf_config(cfg_dir, **overrides)


def save_hf_checkpoint(directory: str | Path, params: Mapping[str, Any], config: presets.CLIPConfig,
                       *, extra_files: Optional[Mapping[str, str]] = None) -> Path:
  """Writes ``model.safetensors`` + ``config.json`` that both deft_jax and transformers can load."""
  from safetensors.numpy import save_file

  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / "model.safetensors.tmp"
  save_file(flax_to_hf(params), str(tmp))
  tmp.replace(directory / "model.safetensors")
  (directory / "config.json").write_text(json.dumps(presets.to_hf_config(config), indent=2))
  for name, text in (extra_files or {}).items():
    (directory / name).write_text(text)
  return directory


__all__ = [
    "CheckpointMismatchError", "resolve_checkpoint", "read_safetensors", "hf_to_flax", "flax_to_hf",
    "stack_layers", "load_pretrained", "config_from_checkpoint", "save_hf_checkpoint",
]
