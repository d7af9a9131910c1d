"""How CLIP-like a stand-in is where DEFT leans on it: its zero-shot accuracy with the inputs phase 1 gives the
text tower, and how far prompt tuning moves it.

On the first ``test_size`` CIFAR-10 test images (0 = all 10,000), for a CLIP checkpoint:

- ``ensemble`` / ``single``: the 12 caption templates averaged / "a photo of a {}.";
- ``deft_init_<end|middle|front>``: phase 1's initial positive prompts, 16 N(0, 0.02) context vectors and
  "<name>." with the name at that position (mean over ``seeds`` draws; min and max beside it);
- ``coop_<steps>``: the end-position prompts after ``steps`` steps of CoOp prompt tuning (cross-entropy of
  scale x cosine, the CLIP frozen) on CIFAR-10 training images 0..``train_size``-1 with their clean labels
  (never seen in pretraining), with phase 1's optimiser: SGD, momentum 0.9, lr 0.03, weight decay 5e-4, batch
  64 (mean over the seeds). ``logit_scale``: the model's own, or the value given (CLIP's is 100).

Image features are computed once (the eval transform, no augmentation), so everything after is text-side work.

  python -m deft_jax.pretrain.standin probe standin:cifar10_tiny32 --root ../shared/assets
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deft_jax import parallel
from deft_jax.data import cifar_offline, pipeline
from deft_jax.data.config import image_spec
from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights, zeroshot
from deft_jax.models import prompts as prompts_lib
from deft_jax.models.tokenizer import Tokenizer

POSITIONS = ("end", "middle", "front")


def split_features(model, params, split, *, mesh, batch_size: int, data_kw: dict) -> np.ndarray:
  """L2-normalised image features [N, D] of a split, in its order (eval transform)."""
  fn = jax.jit(lambda p, x: zeroshot.image_features(model, p, x))
  out = np.zeros((split.num_examples, model.config.embed_dim), np.float32)
  for local in pipeline.eval_batches(split, global_batch_size=batch_size, **data_kw):
    feats = np.asarray(parallel.to_host(fn(params, parallel.shard_batch(local, mesh)["image"])))
    keep = np.asarray(local["mask"], bool)
    out[np.asarray(local["index"])[keep]] = feats[keep]
  return out


def accuracy(img: np.ndarray, labels: np.ndarray, class_feats) -> float:
  return float(np.mean(np.argmax(img @ np.asarray(class_feats).T, -1) == labels))


def coop(model, params, template, ctx0, img, labels, *, steps: int, scale: float, seed: int, batch_size: int = 64,
         lr: float = 0.03) -> jax.Array:
  """CoOp: the context vectors ``ctx0`` [n_ctx, width] tuned for ``steps`` steps of cross-entropy on
  (``img`` [N, D] normalised image features, ``labels``), the CLIP frozen."""
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr, momentum=0.9))
  img, labels = jnp.asarray(img), jnp.asarray(labels)

  def loss_fn(ctx, idx):
    (feats,) = prompts_lib.context_features(model, params, [ctx], template)
    logits = scale * img[idx] @ feats.T
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

  @jax.jit
  def step(ctx, opt_state, idx):
    grads = jax.grad(loss_fn)(ctx, idx)
    updates, opt_state = tx.update(grads, opt_state, ctx)
    return optax.apply_updates(ctx, updates), opt_state

  ctx, opt_state = ctx0, tx.init(ctx0)
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(labels)) for _ in range(steps * batch_size // len(labels) + 1)])
  for s in range(steps):
    ctx, opt_state = step(ctx, opt_state, jnp.asarray(order[s * batch_size:(s + 1) * batch_size]))
  return ctx


def probe(checkpoint: str, root: str, *, test_size: int = 0, train_size: int = 1000, steps: int = 100,
          seeds: int = 3, logit_scale: Optional[float] = None, batch_size: int = 256, mesh=None) -> dict:
  """The figures of the module docstring, as a dict."""
  mesh = mesh or parallel.make_mesh()
  splits = cifar_offline.load_cifar10n_offline(root, train_indices=f"0:{train_size}", test_size=test_size)
  train, test = splits["train"], splits["test"]
  cfg = clip_weights.config_from_checkpoint(checkpoint)
  model = clip_lib.CLIP(cfg)
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  params = jax.tree.map(jnp.asarray, clip_weights.load_pretrained(checkpoint, abstract, scan=cfg.scan))
  tokenizer = Tokenizer(context_length=cfg.text.context_length)
  data = ml_collections.ConfigDict({"image_size": cfg.vision.image_size, "normalization": "clip"})
  data_kw = dict(mesh=mesh, batch_size=batch_size, data_kw=image_spec(data, cfg.vision.image_size).pipeline_kw())
  test_img = split_features(model, params, test, **data_kw)
  own_scale = float(np.exp(np.asarray(params["logit_scale"])))
  scale = float(logit_scale) if logit_scale else own_scale
  out = {"checkpoint": checkpoint, "test_size": test.num_examples, "logit_scale": round(own_scale, 3)}
  for name in ("ensemble", "single"):
    feats = zeroshot.class_text_features(model, params, test.class_names, tokenizer, zeroshot.templates(name))
    out[name] = accuracy(test_img, test.labels, feats)
  width = cfg.text.width
  templates = {pos: prompts_lib.build_template(test.class_names, tokenizer, n_ctx=16, position=pos)
               for pos in POSITIONS}
  inits = [prompts_lib.init_prompts(jax.random.key(s), templates["end"], width)["pos_ctx"] for s in range(seeds)]
  for pos in POSITIONS:
    accs = [accuracy(test_img, test.labels, prompts_lib.context_features(model, params, [ctx], templates[pos])[0])
            for ctx in inits]
    out[f"deft_init_{pos}"] = _spread(accs)
  train_img = split_features(model, params, train, **data_kw)
  tuned = [coop(model, params, templates["end"], ctx, train_img, train.clean_labels, steps=steps, scale=scale,
                seed=s) for s, ctx in enumerate(inits)]
  out[f"coop_{steps}"] = _spread([accuracy(test_img, test.labels,
                                           prompts_lib.context_features(model, params, [c], templates["end"])[0])
                                  for c in tuned])
  out["coop"] = {"train_images": train.num_examples, "steps": steps, "logit_scale": round(scale, 3),
                 "optimiser": "sgd momentum 0.9, lr 0.03, wd 5e-4, batch 64"}
  return out


def _spread(values) -> dict:
  return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
          "max": round(float(np.max(values)), 4)}
