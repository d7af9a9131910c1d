"""Phase-2 classifiers behind one interface: a pure ``apply`` over ``variables``, plus optimiser rules.

The trainer (``adapt/trainer.py``) knows only :class:`Classifier`; each backbone is a builder here:

- ``clip_classifier``: a pretrained CLIP image encoder (optionally with PEFT) and a new linear head on the
  pre-projection feature ln_post(CLS). Its parameters are ``{"vision_model": ..., "head": ...}``: the text
  tower and the visual projection take no part in this forward pass, so they are not in the train state at
  all (frozen by construction, and no memory spent on them). Rules by ``trainable``:
  "blocks" (the reference's FFT: the transformer blocks and the head train; patch / class / position
  embeddings, ln_pre and ln_post stay frozen), "all" (every visual parameter), "peft" (the PEFT parameters
  and the head; the pretrained backbone frozen), "head" (a linear probe), or an explicit rule list.
- ``text_classifier``: CLIP's own classifier, image features against fixed class text features (zero-shot
  prompts, or the positive prompts learned in phase 1). Nothing trains.
- ``vlpt_classifier``: VLPT, the paper's Fig. 1 classifier: CLIP with visual prompts (PEFT) and CoOp context
  vectors, classifying by the class prompts' text features; only the prompts (and the PEFT) train.
- ``backbone_classifier``: a ``deft_jax.models.backbones`` model (ResNet-50, ConvNeXt-T, ViT-B/16, MAE);
  every parameter trains, as in the paper; batch-norm statistics travel as a second variable collection.

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
from deft_jax.data.config import ImageSpec
from deft_jax.models import build
from deft_jax.models import clip as clip_lib
from deft_jax.models import zeroshot
from deft_jax.models.peft import PEFTConfig, trainable_patterns
from deft_jax.models.presets import CLIPConfig
from deft_jax.tree import flatten, unflatten
from deft_jax.errors import ConfigError

Rule = tuple[str, Any]


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
                                              load=self.load)
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



def _load_vision(full_model: clip_lib.CLIP, vision_params, checkpoint: Optional[str]) -> dict:
  """The whole pretrained CLIP on the host, its visual tower merged into ``vision_params`` (PEFT kept)."""
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(full_model, k), jax.random.key(0))
  return build.load_clip_weights(full_model, {**abstract, "vision_model": vision_params}, checkpoint)


def clip_classifier(model_cfg, *, num_classes: int, mesh, rng, checkpoint: Optional[str], inputs: ImageSpec,
                    peft: Optional[PEFTConfig] = None, trainable="blocks", head_init: str = "random",
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
  full_model = build.build_clip(model_cfg, peft, checkpoint)
  cfg = full_model.config
  module = CLIPClassifier(cfg, num_classes, peft)
  images0 = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)

  def init():
    vision = clip_lib.init_params(full_model, k_clip)["vision_model"]
    return {"params": {"vision_model": vision, "head": module.init(k_head, images0)["params"]["head"]}}

  def load(variables):
    full = _load_vision(full_model, variables["params"]["vision_model"], checkpoint)
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
                    mesh=mesh, sharding_rules=sharding_rules, load=load if checkpoint or head_init == "text" else None,
                    features=features)


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


def text_classifier(model_cfg, *, mesh, rng, checkpoint: Optional[str], inputs: ImageSpec, num_classes: int,
                    class_features: Callable[[clip_lib.CLIP, dict], jax.Array], peft: Optional[PEFTConfig] = None,
                    extra_params: Optional[dict] = None, sharding_rules: Sequence = (),
                    name: str = "zeroshot") -> Classifier:
  """CLIP's own classifier: exp(logit_scale) * <normalised image feature, class text feature>.

  ``extra_params``: flat ``{"vision_model/...": array}`` replacing entries of the pretrained tree (phase 1's
  learned weights for the "no adaptation" variant), before the class text features are computed.
  """
  model = build.build_clip(model_cfg, peft or PEFTConfig(), checkpoint)

  def full_init():
    return clip_lib.init_params(model, rng)

  def init():
    params = full_init()
    return {"params": {k: params[k] for k in IMAGE_SIDE},
            "text": jnp.zeros((num_classes, model.config.embed_dim), jnp.float32)}

  def load(variables):
    del variables  # the class features need the text tower, which the variables do not keep
    params = build.load_clip_weights(model, jax.device_get(jax.jit(full_init)()), checkpoint)
    if extra_params:
      params = _replaced(params, extra_params)
    text = np.asarray(class_features(model, params), np.float32)
    return {"params": {k: params[k] for k in IMAGE_SIDE}, "text": text}  # only the image side is kept

  def apply(variables, images, *, train: bool = False, rng=None):
    del train, rng
    return zeroshot.zero_shot_logits(model, variables["params"], images, variables["text"]), {}

  return Classifier(name=name, apply=apply, init=init, rules=None, inputs=inputs, mesh=mesh,
                    sharding_rules=sharding_rules, load=load)


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


def vlpt_classifier(model_cfg, *, class_names: Sequence[str], tokenizer, mesh, rng, checkpoint: Optional[str],
                    inputs: ImageSpec, peft: Optional[PEFTConfig] = None, n_ctx: int = 16, ctx_init: str = "",
                    class_token_position: str = "end", text_chunk: int = 0, text_prefix_sharing: bool = True,
                    sharding_rules: Sequence = ()) -> Classifier:
  """VLPT: image features (with ``peft``, VPT-deep in the paper) against the text features of C class prompts
  whose context vectors are learned (CoOp, one unified context), logits exp(logit_scale) * cosine. Parameters
  ``{"clip": the whole CLIP, "prompts": {"ctx"}}``; the context and the PEFT parameters train, every
  pretrained weight is frozen. The text tower runs on every step, as in phase 1."""
  from deft_jax.detect import prompts as prompts_lib  # pylint: disable=g-import-not-at-top

  peft = peft or PEFTConfig()
  model = build.build_clip(model_cfg, peft, checkpoint)
  k_clip, k_ctx = jax.random.split(rng)
  template = prompts_lib.build_template(class_names, tokenizer, n_ctx=n_ctx, ctx_init=ctx_init,
                                        position=class_token_position)
  width = model.config.text.width

  def init():
    clip_params = clip_lib.init_params(model, k_clip)
    ctx = prompts_lib.init_prompts(k_ctx, template, width, token_embedding=_token_embedding(clip_params))
    return {"params": {"clip": clip_params, "prompts": {"ctx": ctx["pos_ctx"]}}}

  def load(variables):
    clip_params = build.load_clip_weights(model, variables["params"]["clip"], checkpoint)
    ctx = variables["params"]["prompts"]["ctx"]
    if template.init_ids is not None:  # ctx_init starts from the pretrained word embeddings
      ctx = prompts_lib.init_prompts(k_ctx, template, width, token_embedding=_token_embedding(clip_params))["pos_ctx"]
    return {"params": {"clip": clip_params, "prompts": {"ctx": ctx}}}

  rules = ([(r"prompts/ctx", 1.0)] + [(f"clip/{p}", 1.0) for p in trainable_patterns(peft)]
           + [(r"clip/.*", None)])

  def text_features(p):
    (text,) = prompts_lib.context_features(model, p["clip"], [p["prompts"]["ctx"]], template, chunk=text_chunk,
                                           share_prefix=text_prefix_sharing)
    return text

  def apply(variables, images, *, train: bool = False, rng=None):
    del train, rng
    p = variables["params"]
    text = variables["text"] if "text" in variables else text_features(p)  # training: the context learns
    return zeroshot.zero_shot_logits(model, p["clip"], images, text), {}

  return Classifier(name="vlpt", apply=apply, init=init, rules=rules, inputs=inputs, mesh=mesh,
                    sharding_rules=sharding_rules, load=load,
                    eval_prepare=lambda v: {**v, "text": text_features(v["params"])})


def _token_embedding(clip_params):
  return clip_params["text_model"]["embeddings"]["token_embedding"]["embedding"]


def backbone_classifier(name: str, *, num_classes: int, mesh, rng, inputs: ImageSpec, checkpoint: str = "",
                        dtype: str = "float32", use_reference_optimizer: bool = True,
                        sharding_rules: Sequence = ()) -> Classifier:
  """A ``deft_jax.models.backbones`` model with a new head; every parameter trains. Its own normalisation
  statistics replace ``inputs``' (the backbone was pretrained with them); ``inputs.image_size`` resizes a ViT.

  ``checkpoint``: "" = the backbone's reference checkpoint (random init when it has none, as the tiny test
  backbones), "none" = random init, else a path or hub id.
  """
  from deft_jax.models import backbones  # pylint: disable=g-import-not-at-top

  spec = backbones.get_backbone(name)
  overrides = {}
  if inputs.image_size and inputs.image_size != spec.image_size and spec.family == "vit":
    overrides["image_size"] = inputs.image_size  # the loader resamples the position embedding
  model = spec.build(num_classes, dtype=jnp.dtype(dtype), **overrides)
  dummy = spec.dummy_images(1, model)
  pretrained = checkpoint != "none" and bool(checkpoint or spec.checkpoints)
  if not pretrained:
    logging.warning("adapt: backbone %s starts from random weights (no checkpoint)", name)

  def init():
    return dict(model.init(rng, dummy, train=False))

  def load(variables):
    return dict(backbones.load_pretrained(spec, jax.device_get(variables), checkpoint or None))

  mutable = [k for k in jax.eval_shape(init) if k != "params"]

  def apply(variables, images, *, train: bool = False, rng=None):
    rngs = {"dropout": rng} if (train and rng is not None) else None
    if train and mutable:
      logits, updates = model.apply(variables, images, train=True, mutable=mutable, rngs=rngs)
      return logits, dict(updates)
    return model.apply(variables, images, train=train, rngs=rngs), {}

  o = spec.optimizer
  optim = None
  if use_reference_optimizer:
    optim = {"name": o.name, "momentum": o.momentum, "weight_decay": o.weight_decay, "lr": o.learning_rate}
  size = getattr(model, "image_size", None) or inputs.image_size or spec.image_size  # convnets take any size
  spec_inputs = dataclasses.replace(inputs, image_size=int(size), mean=tuple(spec.mean), std=tuple(spec.std))
  return Classifier(name=name, apply=apply, init=init, rules=[(".*", 1.0)], inputs=spec_inputs, mesh=mesh,
                    sharding_rules=sharding_rules, load=load if pretrained else None, optim=optim)
