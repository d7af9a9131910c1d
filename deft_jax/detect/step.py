"""The phase-1 train step: a pure ``(state, batch) -> (state, metrics)`` function, and the loss it minimises.

State (a plain pytree): ``step``, ``rng`` (uint32 key data), ``params = {"clip": ..., "prompts": {"pos_ctx",
"neg_ctx"}}``, ``opt_state``, and ``online``: per-example records ``p_clean``, ``selected``, ``suggested``,
``margin`` of size N, written at the batch's example indices as they are visited, and ``epoch_selected``
(bool [epochs, N], the same selection kept per epoch, for epoch-sensitivity studies). Each epoch visits every
example once, so after the last epoch ``online["selected"]`` is the method's final clean mask (the selection
made in train mode on augmented views), and it is checkpointed with the rest of the state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from deft_jax import optim
from deft_jax.classify.losses import log_prob_of_label
from deft_jax.detect import losses
from deft_jax.models.prompts import PromptTemplate, text_features
from deft_jax.models import clip as clip_lib

ONLINE_FIELDS = {"p_clean": jnp.float32, "selected": jnp.bool_, "suggested": jnp.int32, "margin": jnp.float32}


@dataclasses.dataclass(frozen=True)
class DetectSettings:
  """Static settings of the phase-1 step (everything the jitted function closes over)."""

  steps_per_epoch: int
  warmup_epochs: int = 1
  # 0-based index of the first epoch whose L_neg uses pseudo-labels (config: 1-based pseudo_labels_from_epoch).
  pseudo_label_start_epoch: int = 1
  strict: bool = False
  warmup_loss: str = "ce"
  text_chunk: int = 0
  # The prompts' shared prefix once per context, then the class suffixes (exact; see models/prompts.py).
  text_prefix_sharing: bool = True
  negatives: str = "uniform"  # L_neg's complementary class (detect/losses.py complementary_labels)


def logits(model: clip_lib.CLIP, params, images, template: PromptTemplate, *, text_chunk: int = 0,
           text_prefix_sharing: bool = True, return_features: bool = False):
  """(s_pos, s_neg) [B, C]; s_neg uses stop-gradient image features so only negative prompts learn from it."""
  text = text_features(model, params["clip"], params["prompts"], template, chunk=text_chunk,
                       share_prefix=text_prefix_sharing)
  return image_logits(model, params, images, text, return_features=return_features)


def image_logits(model: clip_lib.CLIP, params, images, text, *, return_features: bool = False):
  """:func:`logits` against already computed prompt features ``text = (pos, neg)`` [C, D] each: the image side
  alone, for passes where the prompts are fixed (the scoring pass computes them once, not once per batch)."""
  pos, neg = text
  feats = model.apply({"params": params["clip"]}, images, method=clip_lib.CLIP.encode_image)
  img = clip_lib.normalize(feats)
  scale = jnp.exp(params["clip"]["logit_scale"].astype(jnp.float32))
  s_pos = scale * img @ pos.T
  s_neg = scale * jax.lax.stop_gradient(img) @ neg.T
  return (s_pos, s_neg, img) if return_features else (s_pos, s_neg)


def loss_fn(params, batch, rng, step, *, model, template: PromptTemplate, settings: DetectSettings):
  """(total loss, aux) for one batch at optimiser step ``step``."""
  epoch = step // settings.steps_per_epoch
  s_pos, s_neg = logits(model, params, batch["image"], template, text_chunk=settings.text_chunk,
                        text_prefix_sharing=settings.text_prefix_sharing)
  return losses.deft_loss(
      s_pos, s_neg, batch["label"], batch["mask"], rng,
      warmup=epoch < settings.warmup_epochs, pseudo_labels=epoch >= settings.pseudo_label_start_epoch,
      strict=settings.strict, warmup_loss=settings.warmup_loss, negatives=settings.negatives)


def init_online(num_examples: int, num_epochs: int = 1) -> dict:
  out = {k: jnp.zeros((num_examples,), dt) for k, dt in ONLINE_FIELDS.items()}
  out["epoch_selected"] = jnp.zeros((num_epochs, num_examples), jnp.bool_)
  return out


def make_train_step(model, template: PromptTemplate, tx, mask, settings: DetectSettings, lr_fn=None):
  """The un-jitted step; the caller jits it with shardings and donation."""

  def train_step(state: dict, batch: dict):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    (loss, aux), grads = optim.value_and_grad_trainable(
        lambda p: loss_fn(p, batch, rng, step, model=model, template=template, settings=settings),
        state["params"], mask)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optim.apply_updates_trainable(state["params"], updates, mask)
    valid = batch["mask"]
    n = state["online"]["p_clean"].shape[0]
    idx = jnp.where(valid, batch["index"], n)  # padding rows point past the end and are dropped
    online = {k: state["online"][k].at[idx].set(aux[k].astype(ONLINE_FIELDS[k]), mode="drop")
              for k in ONLINE_FIELDS}
    per_epoch = state["online"]["epoch_selected"]
    epoch = jnp.minimum(step // settings.steps_per_epoch, per_epoch.shape[0] - 1)
    online["epoch_selected"] = per_epoch.at[epoch, idx].set(aux["selected"], mode="drop")
    metrics = _batch_metrics(loss, aux, batch)
    if lr_fn is not None:
      metrics["lr"] = lr_fn(step)
    new_state = {**state, "step": step + 1, "params": params, "opt_state": opt_state, "online": online}
    return new_state, metrics

  return train_step


def _batch_metrics(loss, aux, batch) -> dict:
  valid = batch["mask"]
  nvalid = jnp.maximum(valid.sum(), 1)
  sel = aux["selected"] & valid
  known = valid & (batch["clean_label"] >= 0)
  truly_clean = known & (batch["label"] == batch["clean_label"])
  return {
      "loss": loss, "loss_cls": aux["loss_cls"], "loss_neg": aux["loss_neg"],
      "selected_fraction": sel.sum() / nvalid,
      # Running precision of the selection on examples with known ground truth (-1 when none is known).
      "batch_precision": jnp.where(known.any(), (sel & truly_clean).sum() / jnp.maximum((sel & known).sum(), 1),
                                   -1.0),
  }


PRED_PROBS_MODES = ("full", "topk", "none")
# The [B, ...] outputs of a scoring pass that stream to files (the rest are per-example scalars).
ROW_ARRAYS = ("embedding", "pred_probs", "pred_probs_topk", "pred_probs_topk_classes")


@dataclasses.dataclass(frozen=True)
class ScoreOutputs:
  """Which [B, ...] arrays a scoring pass returns besides the per-example scalars: ``embedding`` (the
  L2-normalised image features) and the class probabilities as ``pred_probs`` ("full": [B, C], cleanlab's
  pred_probs; "topk": ``pred_probs_topk`` and ``pred_probs_topk_classes``, the k largest and their classes,
  largest first; "none")."""

  embedding: bool = False
  pred_probs: str = "none"
  topk: int = 5


def score_batch(model, params, batch, template: PromptTemplate, *, strict: bool = False, text_chunk: int = 0,
                text_prefix_sharing: bool = True, with_embedding: bool = False) -> dict:
  """Per-example detector outputs of a (padded) batch: p_clean, is_clean, suggested, margin, label_prob (the
  softmax probability of the given label), log_p_label (its log, computed as a log-softmax that does not round to
  0), strict_margin (losses.strict_margin); with ``with_embedding`` also ``embedding`` (the L2-normalised image
  features) and ``pred_probs`` (the softmax over the positive prompts' logits, [B, C]: the detector's class
  probabilities, cleanlab's pred_probs). Computes the prompts' text features itself; a pass over many batches
  computes them once and calls :func:`score_images`."""
  text = text_features(model, params["clip"], params["prompts"], template, chunk=text_chunk,
                       share_prefix=text_prefix_sharing)
  outputs = ScoreOutputs(embedding=with_embedding, pred_probs="full" if with_embedding else "none")
  return score_images(model, params, text, batch, strict=strict, outputs=outputs)


def score_images(model, params, text, batch, *, strict: bool = False, outputs: ScoreOutputs = ScoreOutputs()
                 ) -> dict:
  """:func:`score_batch` against prompt features ``text = (pos, neg)`` computed beforehand (models/prompts.py
  ``text_features``), with the arrays ``outputs`` asks for."""
  s_pos, s_neg, img = image_logits(model, params, batch["image"], text, return_features=True)
  py = losses.p_yes(s_pos, s_neg)
  p_clean, selected = losses.select_clean(py, batch["label"], strict=strict)
  lab = batch["label"][:, None]
  probs = jax.nn.softmax(s_pos.astype(jnp.float32), axis=-1)
  out = {
      "p_clean": p_clean, "is_clean": selected, "suggested": jnp.argmax(s_pos, axis=-1).astype(jnp.int32),
      "margin": (jnp.take_along_axis(s_pos, lab, -1) - jnp.take_along_axis(s_neg, lab, -1))[:, 0],
      "label_prob": jnp.take_along_axis(probs, lab, -1)[:, 0],
      "index": batch["index"], "valid": batch["mask"],
  }
  # The rankings other than the margin (detect.ranking), as per-example scalars of the logits.
  out["log_p_label"] = log_prob_of_label(s_pos, batch["label"])
  out["strict_margin"] = losses.strict_margin(s_pos, s_neg, batch["label"])
  if outputs.embedding:
    out["embedding"] = img
  if outputs.pred_probs == "full":
    out["pred_probs"] = probs
  elif outputs.pred_probs == "topk":
    top, classes = jax.lax.top_k(probs, min(int(outputs.topk), probs.shape[-1]))
    out["pred_probs_topk"], out["pred_probs_topk_classes"] = top, classes.astype(jnp.int32)
  elif outputs.pred_probs != "none":
    raise ValueError(f"pred_probs must be one of {PRED_PROBS_MODES}, got {outputs.pred_probs!r}")
  return out
