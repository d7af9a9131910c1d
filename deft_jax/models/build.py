"""CLIP models from a run's ``config.model`` section, and their pretrained weights merged into a parameter tree.

``config.model`` fields: ``preset`` (see presets.PRESETS; used when there is no checkpoint),
``checkpoint`` (a HF CLIP directory / .safetensors file / hub id; empty for random init; "pretrain" is
resolved by run.py to this run's pretrained CLIP), ``dtype`` (compute dtype: float32 | bfloat16),
``attention`` (None | "xla" | "cudnn"), ``remat``, ``scan``. Where parameters live on devices is decided
by the train state (deft_jax/train_state.py), not here.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

import jax
import numpy as np

from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights, presets
from deft_jax.models.peft import PEFTConfig
from deft_jax.tree import get


def clip_config(model_cfg, checkpoint: Optional[str] = None) -> presets.CLIPConfig:
  overrides = dict(dtype=get(model_cfg, "dtype", "float32"), attention=get(model_cfg, "attention") or None,
                   remat=bool(get(model_cfg, "remat", False)), scan=bool(get(model_cfg, "scan", False)))
  if checkpoint:
    return clip_weights.config_from_checkpoint(checkpoint, **overrides)
  return presets.get_preset(get(model_cfg, "preset", "vit_b16"), **overrides)


def build_clip(model_cfg, peft: Optional[Any] = None, checkpoint: Optional[str] = None) -> clip_lib.CLIP:
  return clip_lib.CLIP(clip_config(model_cfg, checkpoint), PEFTConfig.from_dict(peft))


def pretrained_leaves(root: str, checkpoint: Optional[str], only: Optional[tuple] = None):
  """``path -> bool`` over the "/"-joined leaf paths of a tree that holds a CLIP's parameters under ``root``:
  whether :func:`load_clip_weights` replaces that leaf from ``checkpoint`` (every CLIP weight but the PEFT
  parameters, which keep their initial values; with ``only``, within those top-level CLIP subtrees). None
  without a checkpoint, where nothing is loaded. For ``train_state.create(loaded=...)``, which then neither
  compiles nor computes those leaves' random values."""
  if not checkpoint:
    return None
  head = f"{root}/" if root else ""
  peft = [re.compile(p) for p in clip_weights.PEFT_PATTERNS]

  def loaded(path: str) -> bool:
    if not path.startswith(head):
      return False
    rel = path[len(head):]
    if only is not None and rel.split("/", 1)[0] not in only:
      return False
    return not any(p.fullmatch(rel) for p in peft)

  return loaded


def load_clip_weights(model: clip_lib.CLIP, params, checkpoint: Optional[str]) -> Any:
  """``params`` (a whole CLIP tree of arrays; leaves the checkpoint provides may be ShapeDtypeStructs) with the
  checkpoint's weights merged in strictly, as host arrays; PEFT parameters keep their values. No checkpoint:
  ``params`` unchanged."""
  if not checkpoint:
    return params
  logging.info("loading CLIP weights from %s", checkpoint)
  host = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, params)
  return clip_weights.load_pretrained(checkpoint, host, scan=model.config.scan)
