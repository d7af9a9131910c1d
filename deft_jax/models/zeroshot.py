"""Zero-shot CLIP classification, in one place: caption templates, class text features, logits.

The templates are also the captions of contrastive pretraining (deft_jax/pretrain), the prompts of the
label-match baseline, and the text-initialised phase-2 head.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.data.class_names import clean_name
from deft_jax.models import clip as clip_lib
from deft_jax.models import text_prefix
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.errors import ConfigError

TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a pixelated photo of a {}.",
    "an image of a {}.",
)

ZERO_SHOT_TEMPLATE = "a photo of a {}."


def templates(spec) -> tuple[str, ...]:
  """A template set: "ensemble" (the 12 caption templates), "single" ("a photo of a {}.") or a list of
  templates each with "{}" (``adapt.zeroshot_templates``)."""
  if spec == "ensemble":
    return tuple(TEMPLATES)
  if spec == "single":
    return (ZERO_SHOT_TEMPLATE,)
  if isinstance(spec, str) or not spec or not all(isinstance(t, str) and "{}" in t for t in spec):
    raise ConfigError(f"adapt.zeroshot_templates must be 'ensemble', 'single' or a list of templates with '{{}}', "
                     f"got {spec!r}")
  return tuple(spec)


def class_text_features(model: clip_lib.CLIP, params, class_names: Sequence[str], tokenizer: Tokenizer,
                        templates: Sequence[str], *, chunk: int = 256, share_prefix: bool = True) -> jax.Array:
  """[C, embed_dim] L2-normalised class features, averaged over templates (prompt ensembling).

  The captions go through phase 1's text path (deft_jax/models/text_prefix.py): what all of them share (the
  start token; a single template's words before the name) runs once, the rest in suffix-length buckets of at
  most ``chunk`` captions, all in one compiled program.
  """
  names = [clean_name(n) for n in class_names]
  ids = tokenizer.trim_padding(np.concatenate([tokenizer([t.format(n) for n in names]) for t in templates]))
  eot = np.asarray(model.apply({"params": params}, jnp.asarray(ids), method=clip_lib.CLIP.eot_positions))
  layout = text_prefix.plan(ids, eot, share=share_prefix)

  def features(p):
    def embed(rows, cols):
      return model.apply({"params": p}, jnp.asarray(ids[np.ix_(rows, cols)]), method=clip_lib.CLIP.embed_tokens)[None]
    return clip_lib.normalize(text_prefix.encode(model, p, layout, embed, chunk=chunk)[0])

  feats = np.asarray(jax.jit(features)(params)).reshape(len(templates), len(names), -1)
  return clip_lib.normalize(jnp.asarray(feats.mean(0)))


def image_features(model: clip_lib.CLIP, params, images) -> jax.Array:
  """[B, embed_dim] L2-normalised image features (float32)."""
  return clip_lib.normalize(model.apply({"params": params}, images, method=clip_lib.CLIP.encode_image))


def zero_shot_logits(model: clip_lib.CLIP, params, images, class_features) -> jax.Array:
  """exp(logit_scale) * cosine of every image with every class feature [C, D]: [B, C]."""
  scale = jnp.exp(jnp.asarray(params["logit_scale"], jnp.float32))
  return scale * image_features(model, params, images) @ class_features.T
