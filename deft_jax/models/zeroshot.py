"""Zero-shot CLIP classifiers: class text features from caption templates."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.models import clip as clip_lib
from deft_jax.models.tokenizer import Tokenizer


def class_text_features(model: clip_lib.CLIP, params, class_names: Sequence[str], tokenizer: Tokenizer,
                        templates: Sequence[str], *, chunk: int = 256) -> jax.Array:
  """[C, embed_dim] L2-normalised class features, averaged over templates (prompt ensembling)."""
  names = [" ".join(n.replace("_", " ").split()) for n in class_names]
  ids = np.concatenate([tokenizer([t.format(n) for n in names]) for t in templates])  # [T*C, L]
  ids = tokenizer.trim_padding(ids)
  enc = jax.jit(lambda p, x: clip_lib.normalize(model.apply({"params": p}, x, method=clip_lib.CLIP.encode_text)))
  feats = []
  for i in range(0, len(ids), chunk):
    part = ids[i:i + chunk]
    pad = chunk - len(part) if len(ids) > chunk else 0
    out = enc(params, np.pad(part, ((0, pad), (0, 0)), constant_values=tokenizer.pad_id))
    feats.append(np.asarray(out)[: len(part)])
  feats = np.concatenate(feats).reshape(len(templates), len(names), -1)
  return clip_lib.normalize(jnp.asarray(feats.mean(0)))


def zero_shot_logits(model: clip_lib.CLIP, params, images, class_features) -> jax.Array:
  img = clip_lib.normalize(model.apply({"params": params}, images, method=clip_lib.CLIP.encode_image))
  return jnp.exp(params["logit_scale"]) * img @ class_features.T
