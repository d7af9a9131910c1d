"""Loading public safetensors checkpoints (timm or HF ``transformers``) into a backbone's variables.

Pickled checkpoints (``.bin``, ``.pth``) are never read: only ``safetensors.numpy.load_file``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import safetensors.flax
from safetensors.numpy import load_file

from deft_jax.models.backbones import convert as convert_lib
from deft_jax.models.backbones.registry import BackboneSpec, get_backbone
from deft_jax.models.weights import CheckpointMismatchError, merge_params
from deft_jax.tree import flatten
from deft_jax.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _files_in_dir(d: Path) -> list[Path]:
  index = d / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [d / s for s in shards]
  if (d / "model.safetensors").is_file():
    return [d / "model.safetensors"]
  found = sorted(d.glob("*.safetensors"))
  if len(found) == 1:
    return found
  if not found:
    others = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pth", ".pt", ".ckpt"))
    hint = f" (found {others}: pickled checkpoints are refused, convert them to safetensors)" if others else ""
    raise MissingFileError(f"no .safetensors file in {d}{hint}")
  raise MissingFileError(
      f"{d} holds several .safetensors files {[p.name for p in found]} and no model.safetensors[.index.json]; "
      "pass the file itself")


def resolve_checkpoint(path_or_id: str | Path) -> list[Path]:
  """The safetensors file(s) of a local file, a local directory, or a Hugging Face hub id.

  A hub id is downloaded (safetensors and json files only) only when no local path of that name
  exists.
  """
  p = Path(path_or_id).expanduser()
  if p.is_file():
    if p.suffix != ".safetensors":
      raise ConfigError(f"{p} is not a .safetensors file; pickled checkpoints are refused")
    return [p]
  if p.is_dir():
    return _files_in_dir(p)
  s = str(path_or_id)
  if not _HUB_ID.fullmatch(s):
    raise MissingFileError(f"checkpoint {s!r}: no such file or directory, and not a hub id (owner/name)")
  from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  try:
    local = snapshot_download(repo_id=s, allow_patterns=["*.safetensors", "*.json"])
  except Exception as e:  # offline, unknown repo, gated, ...: say what was tried
    raise MissingFileError(f"checkpoint {s!r} is not a local path and downloading it from the "
                            f"Hugging Face hub failed: {e}") from e
  return _files_in_dir(Path(local))


def read_checkpoint(path_or_id: str | Path) -> tuple[dict[str, np.ndarray], Path]:
  """``({torch key: array}, directory)`` of a checkpoint (see ``resolve_checkpoint``)."""
  files = resolve_checkpoint(path_or_id)
  raw: dict[str, np.ndarray] = {}
  for f in files:
    try:
      part = load_file(str(f))
    except TypeError as e:  # NumPy has no bfloat16: read those through JAX, convert to fp32
      if "bfloat16" not in str(e):
        raise
      part = {k: np.asarray(v, np.float32) for k, v in safetensors.flax.load_file(str(f)).items()}
    dup = sorted(set(part) & set(raw))
    if dup:
      raise CheckpointMismatchError(f"{f}: key(s) already seen in another shard: {dup[:10]}")
    raw.update(part)
  return raw, files[0].parent


# HF config fields that change the computation without changing any weight's name or shape.
_HF_CONFIG_EXPECTED = {
    "resnet": {"layer_type": "bottleneck", "downsample_in_bottleneck": False, "downsample_in_first_stage": False,
               "hidden_act": "relu"},
    "convnext": {"hidden_act": "gelu"},
    "vit": {"hidden_act": "gelu", "qkv_bias": True},
}


def check_hf_config(directory: Path, family: str, source: str) -> None:
  """Refuses an HF checkpoint whose config.json (when present) describes another computation,
  e.g. a ResNet v1 (``downsample_in_bottleneck``) that would load cleanly and compute wrongly."""
  path = directory / "config.json"
  if not path.is_file():
    return
  config = json.loads(path.read_text())
  wrong = [f"{k}={config[k]!r} (this model implements {v!r})"
           for k, v in _HF_CONFIG_EXPECTED[family].items() if k in config and config[k] != v]
  if wrong:
    raise CheckpointMismatchError(f"{source}: config.json describes a different architecture: " + ", ".join(wrong))


def _resample_pos_embed(pos: np.ndarray, want: tuple[int, ...], source: str) -> np.ndarray:
  """Resizes ``[1, 1 + g*g, D]`` to another square grid (class token kept), bicubic.

  jax.image's cubic kernel is Keys a=-0.5 (timm/torch use a=-0.75): a fine-tuning start point,
  not a bit-exact copy of timm's resampling.
  """
  n_src, n_dst = pos.shape[1] - 1, want[1] - 1
  g_src, g_dst = int(round(n_src**0.5)), int(round(n_dst**0.5))
  if g_src**2 != n_src or g_dst**2 != n_dst or pos.shape[2] != want[2] or pos.shape[0] != 1:
    raise CheckpointMismatchError(
        f"pos_embed: model expects {want}, {source} has {tuple(pos.shape)} (not two square grids of one width)")
  log.info("resampling pos_embed from a %dx%d to a %dx%d grid", g_src, g_src, g_dst, g_dst)
  grid = pos[0, 1:].reshape(g_src, g_src, -1)
  grid = jax.image.resize(grid, (g_dst, g_dst, grid.shape[-1]), "bicubic")
  return np.concatenate([pos[:, :1], np.asarray(grid).reshape(1, n_dst, -1)], axis=1).astype(pos.dtype)


def load_pretrained(spec: BackboneSpec | str, init_variables: Mapping[str, Any],
                    path_or_id: str | Path | None = None, *, keep_head: bool = False) -> dict:
  """Variables of ``spec``'s model with every backbone weight taken from a checkpoint.

  Args:
    spec: the backbone (or its registry name); its ``family`` must match the checkpoint's.
    init_variables: freshly initialised variables of the model (``spec.init`` / ``model.init``);
      they fix the expected names and shapes and provide the new head.
    path_or_id: a ``.safetensors`` file, a directory with ``model.safetensors`` (or shards + index),
      or a hub id; default: the spec's reference checkpoint. timm vs HF layout is read from the
      key names.
    keep_head: also load the checkpoint's classifier into ``head`` (its class count must equal the
      model's). By default the classifier is dropped by name and ``head`` keeps its init.

  Returns:
    ``{"params": ...}`` (plus ``"batch_stats"`` for ResNet), nested dicts of arrays.

  Raises:
    CheckpointMismatchError: the checkpoint is another family, has keys the mapping does not
      know, or leaves parameters missing / mis-shaped (all named).
  """
  spec = get_backbone(spec) if isinstance(spec, str) else spec
  path_or_id = path_or_id if path_or_id is not None else spec.checkpoints[0]
  raw, directory = read_checkpoint(path_or_id)
  source = str(path_or_id)
  family, fmt = convert_lib.detect_format(raw)
  if family != spec.family:
    raise CheckpointMismatchError(
        f"{source} is a {fmt} {convert_lib.FAMILY_NAMES[family]} checkpoint, but backbone {spec.name!r} "
        f"is a {convert_lib.FAMILY_NAMES[spec.family]}")
  if fmt == "hf":
    check_hf_config(directory, family, source)
  init_params = flatten(init_variables["params"])
  qkv = [v for k, v in init_params.items() if k.endswith("attn/qkv/kernel")]
  num_heads = int(qkv[0].shape[2]) if qkv else None
  converted, dropped = convert_lib.convert(raw, family, fmt, num_heads=num_heads, source=source)
  params = {k[len("params/"):]: v for k, v in converted.items() if k.startswith("params/")}
  stats = {k[len("batch_stats/"):]: v for k, v in converted.items() if k.startswith("batch_stats/")}

  dont_load = []
  head = {k: v for k, v in params.items() if k.startswith("head/")}
  if keep_head:
    if not head:
      raise CheckpointMismatchError(f"keep_head=True but {source} has no classifier")
    want, got = init_params["head/bias"].shape[0], head["head/bias"].shape[0]
    if want != got:
      raise CheckpointMismatchError(
          f"keep_head=True needs the checkpoint's classifier to have the model's class count: "
          f"model has {want} classes, {source} has {got}")
  else:
    for k in head:
      dropped[k] = "checkpoint classifier (keep_head=False: the task has its own classes)"
      del params[k]
    dont_load.append("head/.*")
  # MAE fine-tuning recipe: average pooling with a fresh fc_norm replaces the final norm.
  if "fc_norm/scale" in init_params and "norm/scale" not in init_params and "fc_norm/scale" not in params:
    for k in [k for k in params if k.startswith("norm/")]:
      dropped[k] = "final norm of a token-pooled checkpoint; pool='avg' uses a new fc_norm (MAE recipe)"
      del params[k]
    dont_load.append("fc_norm/.*")
  if "pos_embed" in params and "pos_embed" in init_params:
    want = tuple(init_params["pos_embed"].shape)
    if tuple(params["pos_embed"].shape) != want:
      params["pos_embed"] = _resample_pos_embed(params["pos_embed"], want, source)

  for k, why in sorted(dropped.items()):
    log.info("%s: not loading %s (%s)", source, k, why)
  out = {"params": merge_params(init_variables["params"], params, dont_load=dont_load, source=source)}
  if "batch_stats" in init_variables or stats:
    if "batch_stats" not in init_variables:
      raise CheckpointMismatchError(f"{source} has batch-norm statistics but the model has no batch_stats")
    out["batch_stats"] = merge_params(init_variables["batch_stats"], stats, source=f"{source} (batch_stats)")
  extra = sorted(set(init_variables) - set(out))
  if extra:
    raise CheckpointMismatchError(f"the model has variable collections {extra} that no checkpoint fills")
  return out
