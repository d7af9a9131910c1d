"""Phase 1 driver: builds the DEFT detector from a config, trains it resumably, returns the clean mask.

Config section ``detect`` (defaults in deft_jax/config_lib.py): ``epochs``, ``warmup_epochs``, ``batch_size``,
``optim``/``schedule`` (see deft_jax.optim), ``n_ctx``, ``ctx_init``, ``class_specific``,
``class_token_position``, ``peft`` (models.peft.PEFTConfig fields), ``trainable`` (optimiser rules; None means
prompts + the PEFT parameters, everything pretrained frozen), ``strict_selection``, ``warmup_loss``,
``pseudo_labels_from_epoch`` (the first epoch whose L_neg uses pseudo-labels, counted from 1 as the progress
lines count; None = the first epoch after warm-up; the real-world datasets use 2), ``final_mask`` ("online":
the selection made during the last epoch, the method's definition; "scoring_pass": a final pass without
augmentation), ``scoring_pass``, ``text_chunk``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from deft_jax import loop, optim, parallel
from deft_jax.checkpoint import StageCheckpointer, load_npz, save_npz
from deft_jax.data import pipeline, preprocess
from deft_jax.detect import prompts as prompts_lib
from deft_jax.detect import step as step_lib
from deft_jax.errors import DivergedError
from deft_jax.models import build
from deft_jax.models.peft import PEFTConfig, trainable_patterns
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.report import metrics as report_metrics

OUTPUT_FILE = "detection.npz"
LEARNED_PARAMS_FILE = "learned_params.npz"


def default_rules(peft: PEFTConfig) -> list[tuple[str, Any]]:
  """Prompts and PEFT parameters train at the base lr; every pretrained weight is frozen."""
  rules = [(r"prompts/(pos|neg)_ctx", 1.0)]
  rules += [(f"clip/{p}", 1.0) for p in trainable_patterns(peft)]
  rules.append((r"clip/.*", None))
  return rules


class Detector:
  """Everything static about one detection run: model, prompt layout, optimiser, jitted functions."""

  def __init__(self, config, *, class_names, num_examples: int, mesh, checkpoint: Optional[str],
               steps_per_epoch: int):
    d = config.detect
    self.config, self.mesh = config, mesh
    self.peft = PEFTConfig.from_dict(d.peft)
    self.model = build.build_clip(config.model, self.peft, checkpoint)
    self.checkpoint = checkpoint
    ckpt_dir = Path(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
    self.tokenizer = Tokenizer.for_checkpoint(ckpt_dir, context_length=self.model.config.text.context_length)
    self.template = prompts_lib.build_template(class_names, self.tokenizer, n_ctx=d.n_ctx, ctx_init=d.ctx_init,
                                               position=d.class_token_position)
    self.num_examples = num_examples
    self.steps_per_epoch = steps_per_epoch
    self.total_steps = d.epochs * steps_per_epoch
    warm = int(d.warmup_epochs)
    pseudo = d.pseudo_labels_from_epoch
    self.settings = step_lib.DetectSettings(
        steps_per_epoch=steps_per_epoch, warmup_epochs=warm,
        pseudo_label_start_epoch=warm if pseudo is None else _first_epoch_index(pseudo),
        strict=bool(d.strict_selection),
        warmup_loss=d.warmup_loss, text_chunk=int(d.text_chunk))
    self.rules = [tuple(r) for r in d.trainable] if d.trainable else default_rules(self.peft)
    self.sharding_rules = [tuple(r) for r in config.sharding_rules]

  # ------------------------------------------------------------------------------------------------ state
  def init_state(self, rng) -> dict:
    k_model, k_prompts, k_train = jax.random.split(rng, 3)
    clip_params = build.init_clip_params(self.model, k_model, mesh=self.mesh, sharding_rules=self.sharding_rules,
                                         checkpoint=self.checkpoint, prefix="params/clip/")
    tok = clip_params["text_model"]["embeddings"]["token_embedding"]["embedding"]
    prompts = prompts_lib.init_prompts(k_prompts, self.template, self.model.config.text.width,
                                       class_specific=bool(self.config.detect.class_specific), token_embedding=tok)
    params = {"clip": clip_params, "prompts": prompts}
    self.build_optimizer(params)
    state = {"step": np.int32(0), "rng": jax.random.key_data(k_train), "params": params,
             "opt_state": self.tx.init(params), "online": step_lib.init_online(self.num_examples, self.config.detect.epochs)}
    return jax.device_put(state, self.state_shardings(state))

  def build_optimizer(self, params) -> None:
    d = self.config.detect
    self.tx, self.schedules = optim.make_optimizer(
        params, self.rules, optim=d.optim, schedule=d.schedule, total_steps=self.total_steps,
        steps_per_epoch=self.steps_per_epoch)
    self.mask = optim.trainable_mask(params, self.rules)

  def state_shardings(self, state):
    return parallel.shardings_for(state, self.mesh, self.sharding_rules)

  # ------------------------------------------------------------------------------------------- functions
  def jit_train_step(self, state):
    lr_fn = next(iter(self.schedules.values()), None)
    fn = step_lib.make_train_step(self.model, self.template, self.tx, self.mask, self.settings, lr_fn)
    sh = self.state_shardings(state)
    return jax.jit(fn, in_shardings=(sh, parallel.batch_sharding(self.mesh)),
                   out_shardings=(sh, parallel.replicated(self.mesh)), donate_argnums=(0,))

  def jit_score(self, params, *, with_embedding: bool = False):
    fn = lambda p, b: step_lib.score_batch(self.model, p, b, self.template,  # noqa: E731
                                           strict=self.settings.strict, text_chunk=self.settings.text_chunk,
                                           with_embedding=with_embedding)
    return jax.jit(fn, in_shardings=(self.state_shardings(params), parallel.batch_sharding(self.mesh)),
                   out_shardings=parallel.replicated(self.mesh))


def check_finite_outputs(result: dict, stage: str) -> None:
  """Raises DivergedError when any per-example score is NaN or infinite (a model whose parameters are finite
  can still overflow), before anything is written from it."""
  for k, v in result.items():
    v = np.asarray(v)
    if k.endswith(("p_clean", "label_score", "score")) and not np.isfinite(v).all():
      raise DivergedError(
          f"[{stage}] {int((~np.isfinite(v)).sum())} of {v.size} values of {k!r} are not finite (NaN or inf): training "
          f"diverged, so no clean mask or report is written. Lower the learning rate ({stage}.schedule.lr) "
          "or set grad_clip_norm, and start again in a new --workdir.")


def label_score(margin, logit_scale: float) -> np.ndarray:
  """sigma(margin / exp(logit_scale)) = sigma(cos(x, pos_y) - cos(x, neg_y)): the two-way probability at unit
  temperature. p_clean = sigma(margin) saturates to exactly 0 or 1 in float32 once |margin| > ~17 (a real
  CLIP's logit scale is 100), which would tie the most confident examples; this score is in [0, 1], monotone
  in the margin (the ranking), free of ties in practice, and > 0.5 exactly where p_clean is."""
  m = np.asarray(margin, np.float64) / float(logit_scale)
  return (1.0 / (1.0 + np.exp(-m))).astype(np.float32)


def _first_epoch_index(epoch: int) -> int:
  """detect.pseudo_labels_from_epoch (1-based) -> the 0-based epoch index the step compares against."""
  if int(epoch) < 1:
    raise ValueError(f"detect.pseudo_labels_from_epoch counts epochs from 1 (got {epoch})")
  return int(epoch) - 1


def data_settings(config, model_image_size: int) -> dict:
  mean, std = preprocess.normalization(config.data.normalization)
  size = int(config.data.image_size or model_image_size)
  if size != model_image_size:
    raise ValueError(f"data.image_size={size} but the CLIP model takes {model_image_size} px images")
  return dict(image_size=size, mean=mean, std=std, eval_resize=config.data.get("eval_resize", "short_side"))


def score_split(detector: Detector, params, split, *, batch_size: int, data_kw: dict,
                with_embedding: bool = False) -> dict[str, np.ndarray]:
  """Detector outputs for every example of ``split``, in index order, without augmentation."""
  fn = detector.jit_score(params, with_embedding=with_embedding)
  chunks = []
  for local in pipeline.eval_batches(split, global_batch_size=batch_size, **data_kw):
    chunks.append(fn(params, parallel.shard_batch(local, detector.mesh)))
  return step_lib.gather_by_index(chunks, split.num_examples)


def run(config, workdir: str | Path, *, train_split, mesh, writer, checkpoint: Optional[str]) -> dict:
  """Trains the detector (resuming if possible) and returns the detection outputs over the train split."""
  out_dir = Path(workdir) / "detect"
  out_file = out_dir / OUTPUT_FILE
  if out_file.exists():
    logging.info("[detect] complete: reusing %s", out_file)
    return load_npz(out_file)
  d = config.detect
  spe = pipeline.steps_per_epoch(train_split, d.batch_size)
  det = Detector(config, class_names=train_split.class_names, num_examples=train_split.num_examples, mesh=mesh,
                 checkpoint=checkpoint, steps_per_epoch=spe)
  data_kw = data_settings(config, det.model.config.vision.image_size)
  rng = jax.random.key(config.seed)
  ckpt = StageCheckpointer(out_dir / "checkpoints", every_steps=config.checkpoint_every_steps)
  state = det.init_state(rng)
  restored = ckpt.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                       state))
  if restored is not None:
    state = restored
  train_step = det.jit_train_step(state)
  clean = train_split.clean_labels

  def batches(epoch, start):
    return pipeline.train_batches(train_split, global_batch_size=d.batch_size, seed=config.seed, epoch=epoch,
                                  start_step=start, augment=config.data.train_augment, **data_kw)

  def on_epoch_end(st, epoch):
    online = jax.device_get({k: v for k, v in st["online"].items() if k != "epoch_selected"})
    out = {"selected_fraction": float(online["selected"].mean())}
    writer.write_histograms(int(st["step"]), {"detect/p_clean": online["p_clean"]})
    if clean is not None:
      m = report_metrics.detection_metrics(online["selected"], train_split.labels, clean)
      out.update({k: float(m[k]) for k in ("precision", "recall", "f1")})
    return out

  cfg = loop.LoopConfig("detect", d.epochs, spe, config.log_every_steps, config.checkpoint_every_steps)
  state = loop.run(cfg, state, train_step, batches, mesh=mesh, writer=writer, checkpointer=ckpt,
                   on_epoch_end=on_epoch_end)
  ckpt.close()
  online = jax.device_get(state["online"])
  result = {"epoch_is_clean": np.asarray(online.pop("epoch_selected"))}
  result.update({"online_" + k: np.asarray(v) for k, v in online.items()})
  result["online_is_clean"] = result.pop("online_selected")
  if d.final_mask not in ("online", "scoring_pass"):
    raise ValueError(f"detect.final_mask must be 'online' or 'scoring_pass', got {d.final_mask!r}")
  if d.scoring_pass or d.final_mask == "scoring_pass":
    scored = score_split(det, state["params"], train_split, batch_size=d.eval_batch_size or d.batch_size,
                         data_kw=data_kw)
    result.update({"pass_" + k: v for k, v in scored.items()})
  scale = float(np.exp(np.asarray(jax.device_get(state["params"]["clip"]["logit_scale"]), np.float64)))
  for prefix in ("online_", "pass_"):
    if prefix + "margin" in result:
      result[prefix + "label_score"] = label_score(result[prefix + "margin"], scale)
      result[prefix + "score"] = np.asarray(result[prefix + "margin"], np.float32)
  src = "pass_" if d.final_mask == "scoring_pass" else "online_"
  for k in ("p_clean", "is_clean", "suggested", "margin", "label_score", "score"):
    result[k] = result[src + k]
  result["params_step"] = np.asarray(int(state["step"]))
  check_finite_outputs(result, "detect")
  save_npz(out_file, result)
  save_learned_params(out_dir, state["params"], det.mask)
  return result


def save_learned_params(out_dir: Path, params, mask) -> None:
  """Exactly the leaves phase 1 trained (the optimiser mask: prompts, PEFT parameters, BitFit biases, anything
  ``detect.trainable`` names), for the 'no adaptation' classifier and for reuse."""
  from deft_jax.models.weights import flatten
  trained = flatten(mask)
  flat = {k: np.asarray(v) for k, v in flatten(jax.device_get(params)).items() if trained[k]}
  save_npz(out_dir / LEARNED_PARAMS_FILE, flat)
