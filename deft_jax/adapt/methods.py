"""The phase-2 methods' builders (registered in adapt/__init__.py's METHODS): ``(Context) -> Classifier``.

"fft" (a fresh pretrained image encoder + new head; ``adapt.trainable`` picks the rules; ``adapt.backbone`` other
than "clip" names a ``deft_jax.models.backbones`` model instead, all of whose parameters train with its reference
optimiser by default), "peft" (the PEFT of ``adapt.peft`` + head, backbone frozen), "vlpt" (CLIP with ``adapt.peft``
(VPT-deep) and learned CoOp prompts in ``detect``'s prompt layout: n_ctx, ctx_init, class_token_position; set
``adapt.schedule.lr`` to suit prompts, e.g. 0.03, phase 1's), "none" (classify with phase 1's learned positive
prompts and PEFT weights, its ``learned_params``), "zeroshot" (CLIP with class text features).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from deft_jax.checkpoint import load_npz
from deft_jax.classify import backbone as backbone_lib
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data.config import ImageSpec
from deft_jax.models import prompts as prompts_lib
from deft_jax.models.peft import PEFTConfig
from deft_jax.errors import ConfigError, MissingFileError


@dataclasses.dataclass
class Context:
  """What a builder works with: the run's config, the class names, the run's CLIP, where its variables live
  (mesh) and its key; phase 1's learned parameters file ("none"), and the images a text-initialised head
  calibrates on (``adapt.head_init="text"``; None for the methods that do not train)."""

  config: Any
  class_names: list
  clip: RunCLIP
  mesh: Any
  rng: Any
  phase1_params: Optional[Path] = None
  calibration_images: Optional[Callable] = None

  @property
  def where(self) -> dict:
    return dict(mesh=self.mesh, rng=self.rng, sharding_rules=self.config.sharding_rules)


def zeroshot(ctx: Context) -> clf_lib.Classifier:
  return clf_lib.zeroshot_classifier(ctx.clip, ctx.class_names, ctx.config.adapt.zeroshot_templates, **ctx.where)


def learned_prompts(ctx: Context) -> clf_lib.Classifier:
  """Phase 1's classifier: images against the learned positive prompts, with phase 1's PEFT weights."""
  path = ctx.phase1_params
  if path is None or not path.is_file():
    raise MissingFileError(f"adapt.method='none' classifies with phase 1's learned prompts, but {path} does not "
                           "exist: run the detect stage first (in this workdir)")
  learned = load_npz(path)
  missing = [k for k in ("prompts/pos_ctx", "prompts/neg_ctx") if k not in learned]
  if missing:
    raise ConfigError(f"{path} lacks {missing}")
  d = ctx.config.detect
  extra = {k[len("clip/"):]: v for k, v in learned.items() if k.startswith("clip/")}
  contexts = {"pos_ctx": learned["prompts/pos_ctx"], "neg_ctx": learned["prompts/neg_ctx"]}
  layout = prompts_lib.PromptLayout.from_config(d)
  template = layout.template(ctx.class_names, ctx.clip.tokenizer)

  def features(model, params):
    pos, _ = prompts_lib.text_features(model, params, contexts, template, chunk=layout.text_chunk,
                                       share_prefix=layout.share_prefix)
    return pos

  return clf_lib.text_classifier(ctx.clip, **ctx.where, num_classes=len(ctx.class_names),
                             peft=PEFTConfig.from_dict(d.peft), class_features=features, extra_params=extra,
                             name="learned_prompts")


def vlpt(ctx: Context) -> clf_lib.Classifier:
  """VLPT (visual prompts + learned text prompts, CE): the paper's Fig. 1 classifier, with phase 1's prompt layout."""
  return clf_lib.vlpt_classifier(ctx.clip, class_names=ctx.class_names, **ctx.where,
                             peft=PEFTConfig.from_dict(ctx.config.adapt.peft),
                             layout=prompts_lib.PromptLayout.from_config(ctx.config.detect))


def fft(ctx: Context) -> clf_lib.Classifier:
  a = ctx.config.adapt
  if a.backbone != "clip":
    return backbone(ctx)
  return _clip_head(ctx, PEFTConfig(), a.trainable)


def peft(ctx: Context) -> clf_lib.Classifier:
  a = ctx.config.adapt
  if a.backbone != "clip":
    raise ConfigError(f"adapt.backbone={a.backbone!r} supports method 'fft' only (got {a.method!r})")
  return _clip_head(ctx, PEFTConfig.from_dict(a.peft), "peft")


def _clip_head(ctx: Context, peft_cfg: PEFTConfig, trainable) -> clf_lib.Classifier:
  a = ctx.config.adapt
  if a.get("rules"):
    trainable = [tuple(r) for r in a.rules]
  return clf_lib.clip_classifier(ctx.clip, num_classes=len(ctx.class_names), **ctx.where, peft=peft_cfg,
                             trainable=trainable, head_init=a.head_init,
                             class_features=ctx.clip.class_features(ctx.class_names, a.zeroshot_templates),
                             calibration_images=ctx.calibration_images)


def backbone(ctx: Context) -> clf_lib.Classifier:
  """``adapt.backbone`` (a models.backbones name) with a new head; its own image statistics replace the data's."""
  config, a = ctx.config, ctx.config.adapt
  inputs = ImageSpec(int(config.data.image_size or 0), (), (), config.data.eval_resize)
  return backbone_lib.backbone_classifier(
      a.backbone, num_classes=len(ctx.class_names), mesh=ctx.mesh, rng=ctx.rng, inputs=inputs,
      checkpoint=a.backbone_checkpoint, dtype=config.model.dtype, use_reference_optimizer=bool(a.backbone_optimizer),
      sharding_rules=config.sharding_rules)
