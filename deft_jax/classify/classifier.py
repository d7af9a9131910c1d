"""Classifiers behind one interface: a pure ``apply`` over ``variables``, plus optimiser rules.

The trainer (``classify/trainer.py``) knows only :class:`Classifier`; each CLIP classifier is a builder here, over
the run's CLIP (``classify/run_clip.py``):

- ``clip_classifier``: a pretrained CLIP image encoder (optionally with PEFT) and a new linear head on the
  pre-projection feature ln_post(CLS). Its parameters are ``{"vision_model": ..., "head": ...}``: the text
  tower and the visual projection take no part in this forward pass, so they are not in the train state at
  all (frozen by construction, and no memory spent on them). Rules by ``trainable``:
  "blocks" (the reference's FFT: the transformer blocks and the head train; patch / class / position
  embeddings, ln_pre and ln_post stay frozen), "all" (every visual parameter), "peft" (the PEFT parameters
  and the head; the pretrained backbone frozen), "head" (a linear probe), or an explicit rule list.
- ``text_classifier``: CLIP's own classifier, image features against fixed class text features (zero-shot
  prompts, or the positive prompts learned in phase 1). Nothing trains.
  ``zeroshot_classifier`` is the zero-shot one.
- ``vlpt_classifier``: VLPT, the paper's Fig. 1 classifier: CLIP with visual prompts (PEFT) and CoOp context
  vectors, classifying by the class prompts' text features; only the prompts (and the PEFT) train.

The other backbones (ResNet-50, ConvNeXt-T, ViT-B/16, MAE) are ``classify/backbone.py``.

A classifier is a description, not yet weights: ``init()`` gives random variables (pure, jittable: the train
state is born sharded from it, deft_jax/train_state.py) and ``load(variables)`` merges the pretrained weights
in on the host, so a resumed run restores its state without initialising or loading anything.
``variables`` materialises both once, for classifiers that only evaluate.

``apply(variables, images, *, train, rng) -> (logits float32 [B, C], updated non-param collections)``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import train_state
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data.config import ImageSpec
from deft_jax.models import clip as clip_lib
from deft_jax.models import prompts as prompts_lib
from deft_jax.models import zeroshot
from deft_jax.models.peft import PEFTConfig, trainable_patterns
from deft_jax.models.presets import CLIPConfig
from deft_jax.tree import flatten, unflatten
from deft_jax.errors import ConfigError

Rule = tuple[str, Any]
CALIBRATION_IMAGES = 256  # head_init="text": the training images its scale is calibrated on


@dataclasses.dataclass(eq=False)
class Classifier:
  """A phase-2 classifier.

  Attributes:
    name: for logs and results.
    apply: ``(variables, images, *, train, rng) -> (logits, updated collections)``; pure and jittable.
    init: ``() -> variables`` (``{"params": ..., <other collections>}``), random; pure and jittable.
    rules: optimiser rules over ``variables["params"]`` (deft_jax.optim); None for a classifier that does
      not train.
    inputs: the images the model takes (size, normalisation, the data's eval transform).
    mesh, sharding_rules: where its variables live.
    load: ``variables -> variables`` on the host: the pretrained weights merged in (None: nothing to load).
    optim: overrides of ``config.adapt.optim`` / ``schedule.lr`` (the reference optimiser of a backbone).
    features: optional ``(variables, images) -> pooled features``.
  """

  name: str
  apply: Callable[..., tuple[jax.Array, dict]]
  init: Callable[[], dict]
  rules: Optional[list[Rule]]
  inputs: ImageSpec
  mesh: Any
  sharding_rules: Sequence = ()
  load: Optional[Callable[[dict], dict]] = None
  # ``path -> bool``: the variables' leaves (by "/"-joined path) that ``load`` always replaces, so that their
  # random initialisation is neither compiled nor computed (train_state.create).
  loaded: Optional[Callable[[str], bool]] = None
  optim: Optional[dict] = None
  features: Optional[Callable] = None
  # ``variables -> variables`` with what stays fixed during an evaluation computed once (VLPT: its class
  # prompts' text features, "text"), which ``apply`` then uses instead of computing it per batch.
  eval_prepare: Optional[Callable[[dict], dict]] = None
  # jitted evaluation functions by (mesh, sharding rules), so that per-epoch evaluations compile once.
  jit_cache: dict = dataclasses.field(default_factory=dict, repr=False)
  _variables: Optional[dict] = dataclasses.field(default=None, repr=False)

  @property
  def trains(self) -> bool:
    return self.rules is not None

  @property
  def variables(self) -> dict:
    """The pretrained variables on the mesh (initialised and loaded once, on first use)."""
    if self._variables is None:
      self._variables, _ = train_state.create(self.init, mesh=self.mesh, sharding_rules=self.sharding_rules,
                                              load=self.load, loaded=self.loaded if self.load else None)
    return self._variables


def torch_linear_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): a PyTorch ``nn.Linear``'s default, for the reference's new head."""
  return clip_lib.uniform_init(1.0 / np.sqrt(fan_in))


class CLIPClassifier(nn.Module):
  """CLIP's image encoder up to ln_post(CLS) and a linear head (float32) on that feature."""

  config: CLIPConfig
  num_classes: int
  peft: PEFTConfig = PEFTConfig()

  def setup(self):
    width = self.config.vision.width
    self.vision_model = clip_lib.VisionTransformer(self.config, self.peft)
    self.head = nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=torch_linear_init(width),
                         bias_init=torch_linear_init(width))

  def features(self, images):
    return self.vision_model(images)

  def __call__(self, images, *, train: bool = False):
    del train  # CLIP has no dropout or batch norm
    return self.head(self.vision_model(images).astype(jnp.float32))


def clip_rules(trainable, peft: PEFTConfig) -> list[Rule]:
  """Optimiser rules of a CLIP classifier; see the module docstring."""
  if isinstance(trainable, (list, tuple)):
    return [tuple(r) for r in trainable]
  head = [(r"head/.*", 1.0)]
  if trainable == "blocks":
    # Blocks only: PEFT parameters, when present, live inside the blocks and train with them.
    return [(r"vision_model/encoder/.*", 1.0)] + head + [(r"vision_model/.*", None)]
  if trainable == "all":
    return [(r"vision_model/.*", 1.0)] + head
  if trainable == "head":
    return head + [(r"vision_model/.*", None)]
  if trainable == "peft":
    pats = trainable_patterns(peft)
    if not pats:
      logging.warning("adapt: trainable='peft' with no PEFT configured: only the head trains (a linear probe)")
    return [(p, 1.0) for p in pats] + head + [(r"vision_model/.*", None)]
  raise ConfigError(f"adapt.trainable must be 'blocks', 'all', 'peft', 'head' or a list of (regex, value) rules, "
                   f"got {trainable!r}")


def prompt_rules(prompts: str, peft: PEFTConfig) -> list[Rule]:
  """Optimiser rules of CLIP with learned prompts under "prompts/" (the regex ``prompts``) and its CLIP under
  "clip/": the prompts and the PEFT parameters train at the base lr, every pretrained weight is frozen."""
  return [(prompts, 1.0)] + [(f"clip/{p}", 1.0) for p in trainable_patterns(peft)] + [(r"clip/.*", None)]


def calibration_images(split, limit: int = CALIBRATION_IMAGES):
  """``inputs -> images``: the first ``limit`` images of ``split``, resized and normalised on the host (identical
  on every process); what ``head_init="text"`` calibrates its scale on."""

  def fn(inputs):
    idx = np.arange(min(limit, split.num_examples))
    x = split.load_images(idx, inputs.image_size).astype(np.float32) / 255.0
    return (x - np.asarray(inputs.mean, np.float32)) / np.asarray(inputs.std, np.float32)

  return fn


def _load_vision(clip: RunCLIP, full_model: clip_lib.CLIP, vision_params) -> dict:
  """The whole pretrained CLIP on the host, its visual tower merged into ``vision_params`` (PEFT kept)."""
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(full_model, k), jax.random.key(0))
  return clip.load(full_model, {**abstract, "vision_model": vision_params})


def clip_classifier(clip: RunCLIP, *, num_classes: int, mesh, rng, peft: Optional[PEFTConfig] = None,
                    trainable="blocks", head_init: str = "random",
                    class_features: Optional[Callable[[clip_lib.CLIP, dict], jax.Array]] = None,
                    calibration_images: Optional[Callable[[ImageSpec], np.ndarray]] = None,
                    sharding_rules: Sequence = ()) -> Classifier:
  """A fresh pretrained CLIP image encoder with a new linear head on ln_post(CLS).

  ``head_init="text"`` starts the head at CLIP's zero-shot classifier moved before the projection:
  kernel = s * W_proj @ T^T, bias 0, where T [C, D] are the normalised class text features
  (``class_features(model, clip_params)``) and W_proj [width, D] the visual projection. Zero-shot logits are
  exp(logit_scale) * <f / |f|, t_k> with f = h @ W_proj; a linear head cannot divide by the per-image |f|,
  so s = exp(logit_scale) / mean(|f|) over ``calibration_images(inputs)`` (normalised, un-augmented training
  images, the same on every process). The initial logits are then the zero-shot logits times |f| / mean|f|:
  the same prediction for every image, and the zero-shot scale on average.
  """
  peft = peft or PEFTConfig()
  if head_init not in ("random", "text"):
    raise ConfigError(f"adapt.head_init must be 'random' or 'text', got {head_init!r}")
  if head_init == "text" and (class_features is None or calibration_images is None):
    raise ValueError("head_init='text' needs class_features and calibration_images")
  k_clip, k_head = jax.random.split(rng)
  full_model, inputs = clip.model(peft), clip.inputs
  cfg = full_model.config
  module = CLIPClassifier(cfg, num_classes, peft)
  images0 = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)

  def init():
    vision = clip_lib.init_params(full_model, k_clip)["vision_model"]
    return {"params": {"vision_model": vision, "head": module.init(k_head, images0)["params"]["head"]}}

  def load(variables):
    full = _load_vision(clip, full_model, variables["params"]["vision_model"])
    head = variables["params"]["head"]
    if head_init == "text":
      head = _text_head(full_model, full, module, class_features, calibration_images(inputs))
    return {"params": {"vision_model": full["vision_model"], "head": head}}  # text tower and projection dropped

  def apply(variables, images, *, train: bool = False, rng=None):
    del rng
    return module.apply(variables, images, train=train), {}

  def features(variables, images):
    return module.apply(variables, images, method=CLIPClassifier.features)

  return Classifier(name="clip", apply=apply, init=init, rules=clip_rules(trainable, peft), inputs=inputs,
                    mesh=mesh, sharding_rules=sharding_rules,
                    load=load if clip.checkpoint or head_init == "text" else None,
                    loaded=clip.pretrained_leaves("params", only=("vision_model",)), features=features)


def _text_head(full_model: clip_lib.CLIP, full_params, module: CLIPClassifier, class_features, images) -> dict:
  text = jnp.asarray(class_features(full_model, full_params), jnp.float32)  # [C, D], normalised
  w_proj = jnp.asarray(full_params["visual_projection"]["kernel"], jnp.float32)  # [width, D]
  if len(images) == 0:
    raise ConfigError("head_init='text' needs at least one calibration image")
  pooled = jax.jit(lambda p, x: module.apply({"params": p}, x, method=CLIPClassifier.features))(
      {"vision_model": full_params["vision_model"]}, jnp.asarray(images))
  norms = jnp.linalg.norm(pooled.astype(jnp.float32) @ w_proj, axis=-1)
  scale = jnp.exp(jnp.asarray(full_params["logit_scale"], jnp.float32)) / jnp.mean(norms)
  return {"kernel": scale * (w_proj @ text.T), "bias": jnp.zeros((text.shape[0],), jnp.float32)}


IMAGE_SIDE = ("vision_model", "visual_projection", "logit_scale")


def text_classifier(clip: RunCLIP, *, mesh, rng, num_classes: int,
                    class_features: Callable[[clip_lib.CLIP, dict], jax.Array], peft: Optional[PEFTConfig] = None,
                    extra_params: Optional[dict] = None, sharding_rules: Sequence = (),
                    name: str = "zeroshot") -> Classifier:
  """CLIP's own classifier: exp(logit_scale) * <normalised image feature, class text feature>.

  ``extra_params``: flat ``{"vision_model/...": array}`` replacing entries of the pretrained tree (phase 1's
  learned weights for the "no adaptation" variant), before the class text features are computed.
  """
  model = clip.model(peft)

  def full_init():
    return clip_lib.init_params(model, rng)

  def init():
    params = full_init()
    return {"params": {k: params[k] for k in IMAGE_SIDE},
            "text": jnp.zeros((num_classes, model.config.embed_dim), jnp.float32)}

  def load(variables):
    del variables  # the class features need the text tower, which the variables do not keep
    fresh = (train_state.init_except(full_init, (), clip.pretrained_leaves("")) if clip.checkpoint
             else jax.jit(full_init)())  # only what the checkpoint does not provide is computed
    params = clip.load(model, jax.device_get(fresh))
    if extra_params:
      params = _replaced(params, extra_params)
    text = np.asarray(class_features(model, params), np.float32)
    return {"params": {k: params[k] for k in IMAGE_SIDE}, "text": text}  # only the image side is kept

  def apply(variables, images, *, train: bool = False, rng=None):
    del train, rng
    return zeroshot.zero_shot_logits(model, variables["params"], images, variables["text"]), {}

  return Classifier(name=name, apply=apply, init=init, rules=None, inputs=clip.inputs, mesh=mesh,
                    sharding_rules=sharding_rules, load=load, loaded=lambda path: True)  # load ignores them


def zeroshot_classifier(clip: RunCLIP, class_names: Sequence[str], templates, *, mesh, rng,
                        sharding_rules: Sequence = ()) -> Classifier:
  """CLIP zero-shot: images against the class text features of the caption ``templates``."""
  return text_classifier(clip, mesh=mesh, rng=rng, num_classes=len(class_names),
                         class_features=clip.class_features(class_names, templates), sharding_rules=sharding_rules,
                         name="zeroshot")


def _replaced(params, extra_params: dict):
  flat = flatten(params)
  unknown = sorted(set(extra_params) - set(flat))
  if unknown:
    raise ConfigError(f"{len(unknown)} learned parameter(s) have no place in this CLIP (another PEFT "
                     f"configuration?): {unknown[:10]}")
  for k, v in extra_params.items():
    if tuple(np.shape(flat[k])) != tuple(np.shape(v)):
      raise ConfigError(f"learned parameter {k}: model expects {tuple(np.shape(flat[k]))}, got {np.shape(v)}")
    flat[k] = np.asarray(v, np.float32)
  return unflatten(flat)


def vlpt_classifier(clip: RunCLIP, *, class_names: Sequence[str], mesh, rng, peft: Optional[PEFTConfig] = None,
                    layout: prompts_lib.PromptLayout = prompts_lib.PromptLayout(),
                    sharding_rules: Sequence = ()) -> Classifier:
  """VLPT: image features (with ``peft``, VPT-deep in the paper) against the text features of C class prompts
  whose context vectors are learned (CoOp, one unified context, laid out as ``layout``), logits exp(logit_scale)
  * cosine. Parameters ``{"clip": the whole CLIP, "prompts": {"ctx"}}``; the context and the PEFT parameters
  train, every pretrained weight is frozen. The text tower runs on every step, as in phase 1."""
  peft = peft or PEFTConfig()
  model = clip.model(peft)
  k_clip, k_ctx = jax.random.split(rng)
  template = layout.template(class_names, clip.tokenizer)
  width = model.config.text.width

  def init():
    clip_params = clip_lib.init_params(model, k_clip)
    ctx = prompts_lib.init_prompts(k_ctx, template, width, token_embedding=prompts_lib.token_embedding(clip_params))
    return {"params": {"clip": clip_params, "prompts": {"ctx": ctx["pos_ctx"]}}}

  def load(variables):
    clip_params = clip.load(model, variables["params"]["clip"])
    words = prompts_lib.words_init(k_ctx, template, clip_params)
    ctx = variables["params"]["prompts"]["ctx"] if words is None else words["pos_ctx"]
    return {"params": {"clip": clip_params, "prompts": {"ctx": ctx}}}

  def text_features(p):
    (text,) = prompts_lib.context_features(model, p["clip"], [p["prompts"]["ctx"]], template,
                                           chunk=layout.text_chunk, share_prefix=layout.share_prefix)
    return text

  def apply(variables, images, *, train: bool = False, rng=None):
    del train, rng
    p = variables["params"]
    text = variables["text"] if "text" in variables else text_features(p)  # training: the context learns
    return zeroshot.zero_shot_logits(model, p["clip"], images, text), {}

  return Classifier(name="vlpt", apply=apply, init=init, rules=prompt_rules(r"prompts/ctx", peft), inputs=clip.inputs,
                    mesh=mesh, sharding_rules=sharding_rules, load=load, loaded=clip.pretrained_leaves("params/clip"),
                    eval_prepare=lambda v: {**v, "text": text_features(v["params"])})


