"""The run's CLIP: made once per run (run.py) and handed down to the stages and the classifiers they build.

Its architecture (read from the checkpoint, or the preset), its tokenizer, the images it takes (checked against
``config.data``) and the class text features of the zero-shot classifier are computed here once, not again in
every helper that needs one of them.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax

from deft_jax.data.config import ImageSpec, image_spec
from deft_jax.models import build as model_build
from deft_jax.models import clip as clip_lib
from deft_jax.models import zeroshot
from deft_jax.models.peft import PEFTConfig
from deft_jax.models.presets import CLIPConfig
from deft_jax.models.tokenizer import Tokenizer


class RunCLIP:
  """The CLIP of a run: ``config.model`` with its weights at ``checkpoint`` (None: random init).

  Its architecture (``config``), its tokenizer (the files beside a local checkpoint, else the OpenAI
  vocabulary) and the images it takes under ``config.data`` (``inputs``) are each computed once, on first use:
  a run whose phase 2 trains another backbone never reads the CLIP checkpoint.
  """

  def __init__(self, config, checkpoint: Optional[str]):
    self.model_cfg, self.data_cfg = config.model, config.data
    self.checkpoint = checkpoint or None
    self._text_features = {}

  @functools.cached_property
  def config(self) -> CLIPConfig:
    return model_build.clip_config(self.model_cfg, self.checkpoint)

  @functools.cached_property
  def tokenizer(self) -> Tokenizer:
    return Tokenizer.for_checkpoint(self.checkpoint, context_length=self.config.text.context_length)

  @functools.cached_property
  def inputs(self) -> ImageSpec:
    """The images it takes (``data.image_size`` checked against its own)."""
    return image_spec(self.data_cfg, self.config.vision.image_size)

  def model(self, peft=None) -> clip_lib.CLIP:
    """The CLIP module, with ``peft`` (a PEFTConfig or its dict; None: none) in its visual blocks."""
    return clip_lib.CLIP(self.config, PEFTConfig.from_dict(peft))

  def pretrained_leaves(self, root: str, only: Optional[tuple] = None):
    """models.build.pretrained_leaves of this CLIP's checkpoint."""
    return model_build.pretrained_leaves(root, self.checkpoint, only=only)

  def load(self, model: clip_lib.CLIP, params):
    """``params`` with the checkpoint's weights merged in (models.build.load_clip_weights)."""
    return model_build.load_clip_weights(model, params, self.checkpoint)

  def class_features(self, class_names: Sequence[str], template_spec) -> Callable[[clip_lib.CLIP, dict], jax.Array]:
    """``(model, pretrained params) -> [C, D]``: the normalised class text features of the zero-shot classifier
    (template ensemble). With a checkpoint they are computed once per run for each (class names, templates);
    without one every classifier has its own random CLIP, so they are computed for the params given."""
    templates = zeroshot.templates(template_spec)
    key = (tuple(class_names), templates)

    def fn(model, params):
      if self.checkpoint and key in self._text_features:
        return self._text_features[key]
      feats = zeroshot.class_text_features(model, params, class_names, self.tokenizer, templates)
      if self.checkpoint:
        self._text_features[key] = feats
      return feats

    return fn
