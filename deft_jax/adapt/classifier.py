"""Phase-2 classifiers behind one interface: a pure ``apply`` over ``variables``, plus optimiser rules.

The trainer (``adapt/train.py``) knows only :class:`Classifier`; each backbone is a builder here:

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

from deft_jax import parallel
from deft_jax.models import build
from deft_jax.models import clip as clip_lib
from deft_jax.models.peft import PEFTConfig, trainable_patterns
from deft_jax.models.presets import CLIPConfig
from deft_jax.models.weights import flatten, unflatten

Rule = tuple[str, Any]


@dataclasses.dataclass
class Classifier:
  """A phase-2 classifier.

  Attributes:
    name: for logs and results.
    apply: ``(variables, images, *, train, rng) -> (logits, updated collections)``; pure and jittable.
    variables: ``{"params": ..., <other collections>}`` as device arrays, already sharded.
    rules: optimiser rules over ``variables["params"]`` (deft_jax.optim); None for a classifier that does
      not train.
    image_size, mean, std: the input the model expects (images are normalised with mean / std).
    eval_resize: the eval transform of the data (data.eval_resize: "short_side" or "squash").
    optim: overrides of ``config.adapt.optim`` / ``schedule.lr`` (the reference optimiser of a backbone).
    features: optional ``(variables, images) -> pooled features``.
  """

  name: str
  apply: Callable[..., tuple[jax.Array, dict]]
  variables: dict
  rules: Optional[list[Rule]]
  image_size: int
  mean: Sequence[float]
  std: Sequence[float]
  optim: Optional[dict] = None
  features: Optional[Callable] = None
  eval_resize: str = "short_side"
  # jitted evaluation functions by (mesh, sharding rules), so that per-epoch evaluations compile once.
  jit_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def trains(self) -> bool:
    return self.rules is not None


def torch_linear_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): a PyTorch ``nn.Linear``'s default, for the reference's new head."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


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
  raise ValueError(f"adapt.trainable must be 'blocks', 'all', 'peft', 'head' or a list of (regex, value) rules, "
                   f"got {trainable!r}")


def _clip_state_params(model: clip_lib.CLIP, rng, *, mesh, sharding_rules, checkpoint):
  """The whole pretrained CLIP (both towers), born sharded, under the state path ``params/...``."""
  return build.init_clip_params(model, rng, mesh=mesh, sharding_rules=sharding_rules, checkpoint=checkpoint,
                                prefix="params/")


def clip_classifier(model_cfg, *, num_classes: int, mesh, rng, checkpoint: Optional[str],
                    peft: Optional[PEFTConfig] = None, trainable="blocks", head_init: str = "random",
                    class_features: Optional[Callable[[clip_lib.CLIP, dict], jax.Array]] = None,
                    calibration_images: Optional[Callable[..., np.ndarray]] = None, mean=(), std=(),
                    sharding_rules: Sequence = ()) -> Classifier:
  """A fresh pretrained CLIP image encoder with a new linear head on ln_post(CLS).

  ``head_init="text"`` starts the head at CLIP's zero-shot classifier moved before the projection:
  kernel = s * W_proj @ T^T, bias 0, where T [C, D] are the normalised class text features
  (``class_features(model, clip_params)``) and W_proj [width, D] the visual projection. Zero-shot logits are
  exp(logit_scale) * <f / |f|, t_k> with f = h @ W_proj; a linear head cannot divide by the per-image |f|,
  so s = exp(logit_scale) / mean(|f|) over ``calibration_images(image_size, mean, std)`` (normalised,
  un-augmented training images, the same on every process). The initial logits are then the zero-shot logits
  times |f| / mean|f|: the same prediction for every image, and the zero-shot scale on average.
  """
  peft = peft or PEFTConfig()
  k_clip, k_head = jax.random.split(rng)
  full_model = build.build_clip(model_cfg, peft, checkpoint)
  cfg = full_model.config
  full = _clip_state_params(full_model, k_clip, mesh=mesh, sharding_rules=sharding_rules, checkpoint=checkpoint)
  module = CLIPClassifier(cfg, num_classes, peft)
  images0 = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
  head = jax.jit(lambda k: module.init(k, images0)["params"]["head"])(k_head)
  if head_init == "text":
    if class_features is None or calibration_images is None:
      raise ValueError("head_init='text' needs class_features and calibration_images")
    head = _text_head(full_model, full, module, class_features,
                      calibration_images(cfg.vision.image_size, mean, std))
  elif head_init != "random":
    raise ValueError(f"adapt.head_init must be 'random' or 'text', got {head_init!r}")
  params = {"vision_model": full["vision_model"], "head": head}
  del full  # the text tower and projection are not part of the classifier
  sh = parallel.shardings_for({"params": params}, mesh, sharding_rules)["params"]
  params = jax.device_put(params, sh)

  def apply(variables, images, *, train: bool = False, rng=None):
    del rng
    return module.apply(variables, images, train=train), {}

  def features(variables, images):
    return module.apply(variables, images, method=CLIPClassifier.features)

  return Classifier(name="clip", apply=apply, variables={"params": params}, rules=clip_rules(trainable, peft),
                    image_size=cfg.vision.image_size, mean=mean, std=std, features=features)


def _text_head(full_model: clip_lib.CLIP, full_params, module: CLIPClassifier, class_features, images) -> dict:
  text = jnp.asarray(class_features(full_model, full_params), jnp.float32)  # [C, D], normalised
  w_proj = jnp.asarray(full_params["visual_projection"]["kernel"], jnp.float32)  # [width, D]
  if len(images) == 0:
    raise ValueError("head_init='text' needs at least one calibration image")
  pooled = jax.jit(lambda p, x: module.apply({"params": p}, x, method=CLIPClassifier.features))(
      {"vision_model": full_params["vision_model"]}, jnp.asarray(images))
  norms = jnp.linalg.norm(pooled.astype(jnp.float32) @ w_proj, axis=-1)
  scale = jnp.exp(full_params["logit_scale"].astype(jnp.float32)) / jnp.mean(norms)
  return {"kernel": scale * (w_proj @ text.T), "bias": jnp.zeros((text.shape[0],), jnp.float32)}


def text_classifier(model_cfg, *, mesh, rng, checkpoint: Optional[str], peft: Optional[PEFTConfig] = None,
                    class_features: Callable[[clip_lib.CLIP, dict], jax.Array],
                    extra_params: Optional[dict] = None, mean=(), std=(), sharding_rules: Sequence = (),
                    name: str = "zeroshot") -> Classifier:
  """CLIP's own classifier: exp(logit_scale) * <normalised image feature, class text feature>.

  ``extra_params``: flat ``{"vision_model/...": array}`` replacing entries of the pretrained tree (phase 1's
  learned PEFT weights for the "no adaptation" variant).
  """
  model = build.build_clip(model_cfg, peft or PEFTConfig(), checkpoint)
  params = _clip_state_params(model, rng, mesh=mesh, sharding_rules=sharding_rules, checkpoint=checkpoint)
  if extra_params:
    flat = flatten(params)
    unknown = sorted(set(extra_params) - set(flat))
    if unknown:
      raise ValueError(f"{len(unknown)} learned parameter(s) have no place in this CLIP (another PEFT "
                       f"configuration?): {unknown[:10]}")
    for k, v in extra_params.items():
      if tuple(flat[k].shape) != tuple(np.shape(v)):
        raise ValueError(f"learned parameter {k}: model expects {tuple(flat[k].shape)}, got {np.shape(v)}")
      flat[k] = jax.device_put(np.asarray(v, np.float32), flat[k].sharding)
    params = unflatten(flat)
  text = jnp.asarray(class_features(model, params), jnp.float32)
  # Only the image side is needed from here on.
  params = {k: params[k] for k in ("vision_model", "visual_projection", "logit_scale")}

  def apply(variables, images, *, train: bool = False, rng=None):
    del train, rng
    p = variables["params"]
    img = clip_lib.normalize(model.apply({"params": p}, images, method=clip_lib.CLIP.encode_image))
    return jnp.exp(p["logit_scale"].astype(jnp.float32)) * img @ variables["text"].T, {}

  return Classifier(name=name, apply=apply, variables={"params": params, "text": text}, rules=None,
                    image_size=model.config.vision.image_size, mean=mean, std=std)


def vlpt_classifier(model_cfg, *, class_names: Sequence[str], tokenizer, mesh, rng, checkpoint: Optional[str],
                    peft: Optional[PEFTConfig] = None, n_ctx: int = 16, ctx_init: str = "",
                    class_token_position: str = "end", text_chunk: int = 0, mean=(), std=(),
                    sharding_rules: Sequence = ()) -> Classifier:
  """VLPT: image features (with ``peft``, VPT-deep in the paper) against the text features of C class prompts
  whose context vectors are learned (CoOp, one unified context), logits exp(logit_scale) * cosine. Parameters
  ``{"clip": the whole CLIP, "prompts": {"ctx"}}``; the context and the PEFT parameters train, every
  pretrained weight is frozen. The text tower runs on every step, as in phase 1."""
  from deft_jax.detect import prompts as prompts_lib  # pylint: disable=g-import-not-at-top

  peft = peft or PEFTConfig()
  model = build.build_clip(model_cfg, peft, checkpoint)
  k_clip, k_ctx = jax.random.split(rng)
  clip_params = build.init_clip_params(model, k_clip, mesh=mesh, sharding_rules=sharding_rules,
                                       checkpoint=checkpoint, prefix="params/clip/")
  template = prompts_lib.build_template(class_names, tokenizer, n_ctx=n_ctx, ctx_init=ctx_init,
                                        position=class_token_position)
  tok = clip_params["text_model"]["embeddings"]["token_embedding"]["embedding"]
  ctx = prompts_lib.init_prompts(k_ctx, template, model.config.text.width, token_embedding=tok)["pos_ctx"]
  params = {"clip": clip_params, "prompts": {"ctx": ctx}}
  params = jax.device_put(params, parallel.shardings_for({"params": params}, mesh, sharding_rules)["params"])
  rules = ([(r"prompts/ctx", 1.0)] + [(f"clip/{p}", 1.0) for p in trainable_patterns(peft)]
           + [(r"clip/.*", None)])

  def apply(variables, images, *, train: bool = False, rng=None):
    del train, rng
    p = variables["params"]
    (text,) = prompts_lib.context_features(model, p["clip"], [p["prompts"]["ctx"]], template, chunk=text_chunk)
    img = clip_lib.normalize(model.apply({"params": p["clip"]}, images, method=clip_lib.CLIP.encode_image))
    return jnp.exp(p["clip"]["logit_scale"].astype(jnp.float32)) * img @ text.T, {}

  return Classifier(name="vlpt", apply=apply, variables={"params": params}, rules=rules,
                    image_size=model.config.vision.image_size, mean=mean, std=std)


def backbone_classifier(name: str, *, num_classes: int, mesh, rng, checkpoint: str = "", dtype: str = "float32",
                        image_size: int = 0, use_reference_optimizer: bool = True,
                        sharding_rules: Sequence = ()) -> Classifier:
  """A ``deft_jax.models.backbones`` model with a new head; every parameter trains.

  ``checkpoint``: "" = the backbone's reference checkpoint (random init when it has none, as the tiny test
  backbones), "none" = random init, else a path or hub id.
  """
  from deft_jax.models import backbones  # pylint: disable=g-import-not-at-top

  spec = backbones.get_backbone(name)
  overrides = {}
  if image_size and image_size != spec.image_size and spec.family == "vit":
    overrides["image_size"] = image_size  # the loader resamples the position embedding
  model = spec.build(num_classes, dtype=jnp.dtype(dtype), **overrides)
  dummy = spec.dummy_images(1, model)
  init = lambda k: model.init(k, dummy, train=False)  # noqa: E731
  abstract = jax.eval_shape(init, rng)
  sh = parallel.shardings_for(abstract, mesh, sharding_rules)
  variables = dict(jax.jit(init, out_shardings=sh)(rng))
  if checkpoint != "none" and (checkpoint or spec.checkpoints):
    loaded = backbones.load_pretrained(spec, jax.device_get(variables), checkpoint or None)
    variables = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), dict(loaded), sh)
  else:
    logging.warning("adapt: backbone %s starts from random weights (no checkpoint)", name)
  mutable = [k for k in variables if k != "params"]

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
  size = getattr(model, "image_size", None) or image_size or spec.image_size  # convnets take any size
  return Classifier(name=name, apply=apply, variables=variables, rules=[(".*", 1.0)], image_size=int(size),
                    mean=spec.mean, std=spec.std, optim=optim)
