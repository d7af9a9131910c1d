"""Classifiers from a run's config: the phase-2 variants, zero-shot CLIP, phase 1's prompts, the selectors' model.

``config.adapt.method``: "fft" (a fresh pretrained image encoder + new head; ``trainable`` picks the rules),
"peft" (the PEFT of ``adapt.peft`` + head, backbone frozen), "none" (classify with phase 1's learned positive
prompts and PEFT weights, read from ``workdir/detect/learned_params.npz``), "zeroshot" (CLIP with class text
features). ``config.adapt.backbone`` other than "clip" names a ``deft_jax.models.backbones`` model for
"fft" (all its parameters train, its reference optimiser by default). "vlpt": CLIP with ``adapt.peft`` (VPT-deep)
and learned CoOp prompts (``detect``'s prompt layout: n_ctx, ctx_init, class_token_position), trained with the
adapt loss; set ``adapt.schedule.lr`` to suit prompts (e.g. 0.03, phase 1's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax

from deft_jax.checkpoint import load_npz
from deft_jax.adapt import classifier as clf
from deft_jax.data import preprocess
from deft_jax.detect import prompts as prompts_lib
from deft_jax.models import build as model_build
from deft_jax.models import zeroshot
from deft_jax.models.peft import PEFTConfig
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.pretrain.templates import TEMPLATES, ZERO_SHOT_TEMPLATE

METHODS = ("fft", "peft", "vlpt", "none", "zeroshot")
LEARNED_PARAMS = Path("detect") / "learned_params.npz"


def templates(spec) -> tuple[str, ...]:
  """``adapt.zeroshot_templates``: "ensemble" (12 caption templates), "single" ("a photo of a {}.") or a list."""
  if spec == "ensemble":
    return tuple(TEMPLATES)
  if spec == "single":
    return (ZERO_SHOT_TEMPLATE,)
  if isinstance(spec, str) or not spec or not all(isinstance(t, str) and "{}" in t for t in spec):
    raise ValueError(f"adapt.zeroshot_templates must be 'ensemble', 'single' or a list of templates with '{{}}', "
                     f"got {spec!r}")
  return tuple(spec)


def _tokenizer(checkpoint: Optional[str], model) -> Tokenizer:
  ckpt_dir = Path(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
  return Tokenizer.for_checkpoint(ckpt_dir, context_length=model.config.text.context_length)


def zeroshot_features(class_names: Sequence[str], template_spec, checkpoint: Optional[str]) -> Callable:
  """``(model, clip_params) -> [C, D]`` normalised class text features (template ensemble)."""
  tmpl = templates(template_spec)

  def fn(model, params):
    return zeroshot.class_text_features(model, params, class_names, _tokenizer(checkpoint, model), tmpl)

  return fn


def clip_normalization(config, image_size: int) -> tuple:
  size = int(config.data.image_size or image_size)
  if size != image_size:
    raise ValueError(f"data.image_size={size} but the CLIP model takes {image_size} px images")
  return preprocess.normalization(config.data.normalization)


def _mean_std(config, checkpoint: Optional[str]):
  return clip_normalization(config, model_build.clip_config(config.model, checkpoint).vision.image_size)


def zeroshot_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng) -> clf.Classifier:
  mean, std = _mean_std(config, checkpoint)
  return _with_data(config, clf.text_classifier(
      config.model, mesh=mesh, rng=rng, checkpoint=checkpoint, mean=mean, std=std,
      class_features=zeroshot_features(class_names, config.adapt.zeroshot_templates, checkpoint),
      sharding_rules=config.sharding_rules, name="zeroshot"))


def prompt_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng,
                      workdir: str | Path) -> clf.Classifier:
  """Phase 1's classifier: images against the learned positive prompts, with phase 1's PEFT weights."""
  path = Path(workdir) / LEARNED_PARAMS
  if not path.is_file():
    raise FileNotFoundError(f"adapt.method='none' classifies with phase 1's learned prompts, but {path} does not "
                            "exist: run the detect stage first (in this workdir)")
  learned = load_npz(path)
  missing = [k for k in ("prompts/pos_ctx", "prompts/neg_ctx") if k not in learned]
  if missing:
    raise ValueError(f"{path} lacks {missing}")
  d = config.detect
  peft = PEFTConfig.from_dict(d.peft)
  extra = {k[len("clip/"):]: v for k, v in learned.items() if k.startswith("clip/")}
  ctx = {"pos_ctx": learned["prompts/pos_ctx"], "neg_ctx": learned["prompts/neg_ctx"]}

  def features(model, params):
    template = prompts_lib.build_template(class_names, _tokenizer(checkpoint, model), n_ctx=d.n_ctx,
                                          ctx_init=d.ctx_init, position=d.class_token_position)
    pos, _ = prompts_lib.text_features(model, params, ctx, template, chunk=int(d.text_chunk))
    return pos

  mean, std = _mean_std(config, checkpoint)
  return _with_data(config, clf.text_classifier(
      config.model, mesh=mesh, rng=rng, checkpoint=checkpoint, peft=peft, class_features=features,
      extra_params=extra, mean=mean, std=std, sharding_rules=config.sharding_rules, name="learned_prompts"))


def clip_head_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng, peft: PEFTConfig,
                         trainable, head_init: str, calibration_images=None) -> clf.Classifier:
  mean, std = _mean_std(config, checkpoint)
  return _with_data(config, clf.clip_classifier(
      config.model, num_classes=len(class_names), mesh=mesh, rng=rng, checkpoint=checkpoint, peft=peft,
      trainable=trainable, head_init=head_init, mean=mean, std=std, sharding_rules=config.sharding_rules,
      class_features=zeroshot_features(class_names, config.adapt.zeroshot_templates, checkpoint),
      calibration_images=calibration_images))


def phase2_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng, workdir=None,
                      calibration_images=None) -> clf.Classifier:
  """The classifier ``config.adapt`` describes (see the module docstring)."""
  a = config.adapt
  if a.method not in METHODS:
    raise ValueError(f"unknown adapt.method {a.method!r}; choose one of {METHODS}")
  if a.method == "zeroshot":
    return zeroshot_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng)
  if a.method == "none":
    return prompt_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng, workdir=workdir)
  if a.method == "vlpt":
    return vlpt_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng,
                           peft=PEFTConfig.from_dict(a.peft))
  if a.backbone != "clip":
    if a.method != "fft":
      raise ValueError(f"adapt.backbone={a.backbone!r} supports method 'fft' only (got {a.method!r})")
    return _with_data(config, clf.backbone_classifier(
        a.backbone, num_classes=len(class_names), mesh=mesh, rng=rng, checkpoint=a.backbone_checkpoint,
        dtype=config.model.dtype, image_size=int(config.data.image_size or 0),
        use_reference_optimizer=bool(a.backbone_optimizer), sharding_rules=config.sharding_rules))
  if a.method == "peft":
    peft, trainable = PEFTConfig.from_dict(a.peft), "peft"
  else:
    peft, trainable = PEFTConfig(), a.trainable
  if a.get("rules"):
    trainable = [tuple(r) for r in a.rules]
  return clip_head_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng, peft=peft,
                              trainable=trainable, head_init=a.head_init, calibration_images=calibration_images)


def vlpt_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng, peft: PEFTConfig) -> clf.Classifier:
  """VLPT (visual prompts + learned text prompts, CE): the paper's Fig. 1 classifier, with phase 1's prompt layout."""
  d = config.detect
  model_cfg = model_build.clip_config(config.model, checkpoint)
  mean, std = clip_normalization(config, model_cfg.vision.image_size)
  ckpt_dir = Path(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
  tokenizer = Tokenizer.for_checkpoint(ckpt_dir, context_length=model_cfg.text.context_length)
  return _with_data(config, clf.vlpt_classifier(
      config.model, class_names=class_names, tokenizer=tokenizer, mesh=mesh, rng=rng, checkpoint=checkpoint,
      peft=peft, n_ctx=int(d.n_ctx), ctx_init=d.ctx_init, class_token_position=d.class_token_position,
      text_chunk=int(d.text_chunk), mean=mean, std=std, sharding_rules=config.sharding_rules))


def selector_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng) -> clf.Classifier:
  """The training-based selectors' model: CLIP with ``baselines.peft`` (VPT-deep by default) and a linear head."""
  b = config.baselines
  return clip_head_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng,
                              peft=PEFTConfig.from_dict(b.peft), trainable="peft", head_init="random")


def _with_data(config, classifier: clf.Classifier) -> clf.Classifier:
  """The classifier with the data's eval transform (data.eval_resize)."""
  return dataclasses.replace(classifier, eval_resize=config.data.get("eval_resize", "short_side"))


def rng_for(config, stream: int):
  """Independent keys per use (phase 2, each selector) from the run seed."""
  return jax.random.fold_in(jax.random.key(int(config.seed)), stream)
