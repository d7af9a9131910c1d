"""CLIP models from a run's ``config.model`` section, with parameters born sharded and merged with weights.

``config.model`` fields: ``preset`` (see presets.PRESETS; used when there is no checkpoint),
``checkpoint`` (a HF CLIP directory / .safetensors file / hub id; empty for random init), ``dtype``
(compute dtype: float32 | bfloat16), ``attention`` (None | "xla" | "cudnn"), ``remat``, ``scan``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from deft_jax import parallel
from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights, presets
from deft_jax.models.peft import PEFTConfig
from deft_jax.models.weights import flatten, unflatten


def _get(cfg, key, default=None):
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def clip_config(model_cfg, checkpoint: Optional[str] = None) -> presets.CLIPConfig:
  overrides = dict(dtype=_get(model_cfg, "dtype", "float32"), attention=_get(model_cfg, "attention") or None,
                   remat=bool(_get(model_cfg, "remat", False)), scan=bool(_get(model_cfg, "scan", False)))
  if checkpoint:
    return clip_weights.config_from_checkpoint(checkpoint, **overrides)
  return presets.get_preset(_get(model_cfg, "preset", "vit_b16"), **overrides)


def build_clip(model_cfg, peft: Optional[Any] = None, checkpoint: Optional[str] = None) -> clip_lib.CLIP:
  return clip_lib.CLIP(clip_config(model_cfg, checkpoint), PEFTConfig.from_dict(peft))


def init_clip_params(model: clip_lib.CLIP, rng, *, mesh, sharding_rules=(), checkpoint: Optional[str] = None,
                     prefix: str = ""):
  """Parameters born sharded (jit with out_shardings), then merged with ``checkpoint`` when given.

  ``prefix`` is the path under which these parameters sit in the train state (e.g. "params/clip/"), so that
  sharding rules written for the whole state apply.
  """
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), rng)
  prefixed = unflatten({prefix + k: v for k, v in flatten(abstract).items()}) if prefix else abstract
  shardings = parallel.shardings_for(prefixed, mesh, sharding_rules)
  if prefix:
    flat = flatten(shardings)
    shardings = unflatten({k[len(prefix):]: v for k, v in flat.items()})
  params = jax.jit(lambda k: clip_lib.init_params(model, k), out_shardings=shardings)(rng)
  if checkpoint:
    logging.info("loading CLIP weights from %s", checkpoint)
    host = jax.device_get(params)
    merged = clip_weights.load_pretrained(checkpoint, host, scan=model.config.scan)
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), merged, shardings)
  return params


def resolve_checkpoint(model_cfg, workdir: Optional[str | Path] = None) -> Optional[str]:
  """``config.model.checkpoint``; the value "pretrain" means the CLIP pretrained by this run's pretrain stage."""
  ckpt = _get(model_cfg, "checkpoint", "") or ""
  if ckpt == "pretrain":
    if workdir is None:
      raise ValueError("model.checkpoint='pretrain' needs a workdir")
    return str(Path(workdir) / "pretrain" / "clip")
  return ckpt or None
