"""Classifiers from a run's config: the phase-2 variants, zero-shot CLIP, phase 1's prompts, the baselines' model.

``config.adapt.method``: "fft" (a fresh pretrained image encoder + new head; ``trainable`` picks the rules),
"peft" (the PEFT of ``adapt.peft`` + head, backbone frozen), "vlpt" (CLIP with ``adapt.peft`` (VPT-deep) and
learned CoOp prompts in ``detect``'s prompt layout: n_ctx, ctx_init, class_token_position; set
``adapt.schedule.lr`` to suit prompts, e.g. 0.03, phase 1's), "none" (classify with phase 1's learned positive
prompts and PEFT weights, its ``learned_params``), "zeroshot" (CLIP with class text features).
``config.adapt.backbone`` other than "clip" names a ``deft_jax.models.backbones`` model for "fft" (all its
parameters train, its reference optimiser by default).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax

from deft_jax.adapt import classifier as clf
from deft_jax.checkpoint import load_npz
from deft_jax.data.config import ImageSpec, image_spec
from deft_jax.detect import prompts as prompts_lib
from deft_jax.models import build as model_build
from deft_jax.models import zeroshot
from deft_jax.models.peft import PEFTConfig
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.errors import ConfigError, MissingFileError

METHODS = ("fft", "peft", "vlpt", "none", "zeroshot")


def _tokenizer(checkpoint: Optional[str], model) -> Tokenizer:
  return Tokenizer.for_checkpoint(checkpoint, context_length=model.config.text.context_length)


def zeroshot_features(class_names: Sequence[str], template_spec, checkpoint: Optional[str]) -> Callable:
  """``(model, clip_params) -> [C, D]`` normalised class text features (template ensemble)."""
  tmpl = zeroshot.templates(template_spec)

  def fn(model, params):
    return zeroshot.class_text_features(model, params, class_names, _tokenizer(checkpoint, model), tmpl)

  return fn


def clip_inputs(config, checkpoint: Optional[str]) -> ImageSpec:
  """The images the run's CLIP takes (its size checked against data.image_size)."""
  return image_spec(config.data, model_build.clip_config(config.model, checkpoint).vision.image_size)


def zeroshot_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng) -> clf.Classifier:
  return clf.text_classifier(
      config.model, mesh=mesh, rng=rng, checkpoint=checkpoint, inputs=clip_inputs(config, checkpoint),
      num_classes=len(class_names),
      class_features=zeroshot_features(class_names, config.adapt.zeroshot_templates, checkpoint),
      sharding_rules=config.sharding_rules, name="zeroshot")


def prompt_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng, workdir) -> clf.Classifier:
  """Phase 1's classifier: images against the learned positive prompts, with phase 1's PEFT weights."""
  from deft_jax.detect import train as detect  # pylint: disable=g-import-not-at-top

  path = detect.outputs(workdir)["learned_params"]
  if not path.is_file():
    raise MissingFileError(f"adapt.method='none' classifies with phase 1's learned prompts, but {path} does not "
                            "exist: run the detect stage first (in this workdir)")
  learned = load_npz(path)
  missing = [k for k in ("prompts/pos_ctx", "prompts/neg_ctx") if k not in learned]
  if missing:
    raise ConfigError(f"{path} lacks {missing}")
  d = config.detect
  extra = {k[len("clip/"):]: v for k, v in learned.items() if k.startswith("clip/")}
  ctx = {"pos_ctx": learned["prompts/pos_ctx"], "neg_ctx": learned["prompts/neg_ctx"]}

  def features(model, params):
    template = prompts_lib.build_template(class_names, _tokenizer(checkpoint, model), n_ctx=d.n_ctx,
                                          ctx_init=d.ctx_init, position=d.class_token_position)
    pos, _ = prompts_lib.text_features(model, params, ctx, template, chunk=int(d.text_chunk),
                                       share_prefix=bool(d.get("text_prefix_sharing", True)))
    return pos

  return clf.text_classifier(
      config.model, mesh=mesh, rng=rng, checkpoint=checkpoint, inputs=clip_inputs(config, checkpoint),
      num_classes=len(class_names), peft=PEFTConfig.from_dict(d.peft), class_features=features,
      extra_params=extra, sharding_rules=config.sharding_rules, name="learned_prompts")


def clip_head_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng, peft: PEFTConfig,
                         trainable, head_init: str, calibration_images=None) -> clf.Classifier:
  return clf.clip_classifier(
      config.model, num_classes=len(class_names), mesh=mesh, rng=rng, checkpoint=checkpoint,
      inputs=clip_inputs(config, checkpoint), peft=peft, trainable=trainable, head_init=head_init,
      sharding_rules=config.sharding_rules,
      class_features=zeroshot_features(class_names, config.adapt.zeroshot_templates, checkpoint),
      calibration_images=calibration_images)


def phase2_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng, workdir=None,
                      calibration_images=None) -> clf.Classifier:
  """The classifier ``config.adapt`` describes (see the module docstring)."""
  a = config.adapt
  if a.method not in METHODS:
    raise ConfigError(f"unknown adapt.method {a.method!r}; choose one of {METHODS}")
  if a.method == "zeroshot":
    return zeroshot_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng)
  if a.method == "none":
    return prompt_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng, workdir=workdir)
  if a.method == "vlpt":
    return vlpt_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng,
                           peft=PEFTConfig.from_dict(a.peft))
  if a.backbone != "clip":
    if a.method != "fft":
      raise ConfigError(f"adapt.backbone={a.backbone!r} supports method 'fft' only (got {a.method!r})")
    size = int(config.data.image_size or 0)
    inputs = ImageSpec(size, (), (), config.data.eval_resize)  # the backbone's own statistics replace them
    return clf.backbone_classifier(
        a.backbone, num_classes=len(class_names), mesh=mesh, rng=rng, inputs=inputs,
        checkpoint=a.backbone_checkpoint, dtype=config.model.dtype,
        use_reference_optimizer=bool(a.backbone_optimizer), sharding_rules=config.sharding_rules)
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
  return clf.vlpt_classifier(
      config.model, class_names=class_names,
      tokenizer=Tokenizer.for_checkpoint(checkpoint, context_length=model_cfg.text.context_length), mesh=mesh,
      rng=rng, checkpoint=checkpoint, inputs=clip_inputs(config, checkpoint), peft=peft, n_ctx=int(d.n_ctx),
      ctx_init=d.ctx_init, class_token_position=d.class_token_position, text_chunk=int(d.text_chunk),
      text_prefix_sharing=bool(d.get("text_prefix_sharing", True)), sharding_rules=config.sharding_rules)


def selector_classifier(config, class_names, *, mesh, checkpoint: Optional[str], rng) -> clf.Classifier:
  """The training baselines' model: CLIP with ``baselines.peft`` (VPT-deep by default) and a linear head."""
  b = config.baselines
  return clip_head_classifier(config, class_names, mesh=mesh, checkpoint=checkpoint, rng=rng,
                              peft=PEFTConfig.from_dict(b.peft), trainable="peft", head_init="random")


def rng_for(config, stream: int):
  """Independent keys per use (phase 2, each baseline) from the run seed."""
  return jax.random.fold_in(jax.random.key(int(config.seed)), stream)
