"""Contrastive pretraining of a CLIP on (image, class-caption) pairs.

Each training image is paired with a caption drawn from templates ("a blurry photo of a {}.") filled with
its class name. The loss is the symmetric InfoNCE of CLIP. Captions built from class names repeat within a
batch, so by default the targets are multi-positive: every pair whose captions name the same class counts as a
positive, with the target mass spread evenly over them (with all-distinct captions this is exactly CLIP's
loss). The result is saved as a Hugging Face-format checkpoint (``model.safetensors`` + ``config.json`` +
tokenizer files), which the detection and adaptation stages load through the same loader as downloaded CLIPs.

Config section ``pretrain``: ``epochs``, ``batch_size``, ``optim``, ``schedule``, ``preset`` (architecture,
e.g. "tiny_32px"), ``multi_positive``, ``split`` (the clean split to train on, e.g. "pretrain"),
``snapshot_epochs`` (epochs after which the model is also exported, with its zero-shot accuracy, to
``pretrain/snapshots/epoch_NNN/``: weaker VLMs of the same run, e.g. for a detection-vs-VLM-strength sweep).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax import loop, optim, parallel, stages, train_state
from deft_jax.checkpoint import StageCheckpointer
from deft_jax.data import pipeline
from deft_jax.data.config import image_spec
from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights, presets, zeroshot
from deft_jax.models.tokenizer import DEFAULT_DIR, Tokenizer
from deft_jax.errors import ConfigError, writing
from deft_jax.pretrain import captions as captions_lib

MAX_LOGIT_SCALE = float(np.log(100.0))


def contrastive_loss(img, txt, labels, logit_scale, valid, *, multi_positive: bool = True):
  """Symmetric InfoNCE between normalised image and text features [B, D] (padding rows excluded)."""
  logits = jnp.exp(logit_scale) * img @ txt.T
  pair_ok = valid[:, None] & valid[None, :]
  logits = jnp.where(pair_ok, logits, -1e9)
  if multi_positive:
    pos = (labels[:, None] == labels[None, :]) & pair_ok
  else:
    pos = jnp.eye(img.shape[0], dtype=bool) & pair_ok
  targets = pos / jnp.maximum(pos.sum(-1, keepdims=True), 1)
  li = -(targets * jax.nn.log_softmax(logits, axis=-1)).sum(-1)
  lt = -(targets.T * jax.nn.log_softmax(logits.T, axis=-1)).sum(-1)
  n = jnp.maximum(valid.sum(), 1)
  return 0.5 * (jnp.where(valid, li, 0).sum() + jnp.where(valid, lt, 0).sum()) / n


def make_step(model: clip_lib.CLIP, captions: captions_lib.CaptionBank, tx, *, multi_positive: bool, lr_fn,
              fixed_logit_scale: float = 0.0):
  """One contrastive step. ``captions``: the bank of caption token ids [T, C, L] (pretrain/captions.py).
  ``fixed_logit_scale`` > 0: the logit scale is that value and not trained; else it is learned, clamped at 100."""
  n_t, n_c, _ = captions.ids.shape
  caption_ids = jnp.asarray(captions.ids)
  eot = jnp.asarray(captions.eot)
  soft = None if captions.soft is None else jnp.asarray(captions.soft)

  def text_features(params, labels, rng):
    if not captions.per_step:  # a layout per image, from all of them
      t_idx = jax.random.randint(rng, labels.shape, 0, n_t)
      if n_t * n_c <= labels.shape[0]:  # encode each distinct caption once, then gather
        table = model.apply({"params": params}, caption_ids.reshape(n_t * n_c, -1),
                            method=clip_lib.CLIP.encode_text)
        return table[t_idx * n_c + labels]
      return model.apply({"params": params}, caption_ids[t_idx, labels], method=clip_lib.CLIP.encode_text)
    # captions.per_step layouts x every class encoded once; each image takes one of those layouts
    k_layout, k_pick, k_soft = jax.random.split(rng, 3)
    sel = jax.random.randint(k_layout, (captions.per_step,), 0, n_t)
    ids = caption_ids[sel].reshape(captions.per_step * n_c, -1)
    embeds = model.apply({"params": params}, ids, method=clip_lib.CLIP.embed_tokens)
    if soft is not None:
      noise = captions.soft_std * jax.random.normal(k_soft, embeds.shape, embeds.dtype)
      embeds = jnp.where(soft[sel].reshape(ids.shape)[..., None], noise, embeds)
    table = model.apply({"params": params}, embeds, eot[sel].reshape(-1), method=clip_lib.CLIP.encode_text_embeds)
    pick = jax.random.randint(k_pick, labels.shape, 0, captions.per_step)
    return table[pick * n_c + labels]

  def loss_fn(params, batch, rng):
    labels = batch["label"]
    txt = text_features(params, labels, rng)
    img = model.apply({"params": params}, batch["image"], method=clip_lib.CLIP.encode_image)
    scale = jnp.log(fixed_logit_scale) if fixed_logit_scale > 0 else params["logit_scale"]
    return contrastive_loss(clip_lib.normalize(img), clip_lib.normalize(txt), labels, scale,
                            batch["mask"], multi_positive=multi_positive)

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optim.apply_updates_trainable(state["params"], updates,
                                           jax.tree.map(lambda _: True, state["params"]))
    if fixed_logit_scale > 0:  # exported as the scale the model was trained with
      params = {**params, "logit_scale": jnp.full_like(params["logit_scale"], np.log(fixed_logit_scale))}
    else:  # CLIP clamps the temperature so that exp(logit_scale) <= 100.
      params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)}
    metrics = {"loss": loss, "logit_scale": jnp.exp(params["logit_scale"]), "lr": lr_fn(state["step"])}
    return {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return step


class ZeroShotEval:
  """Zero-shot top-1 accuracy of the model on ``split`` for several template sets, in one pass over the images.

  The image-side function is compiled once (its class features are an argument), so periodic evaluations
  during training cost one pass each and no recompilation.
  """

  def __init__(self, model, split, tokenizer, *, mesh, batch_size, data_kw, template_sets):
    self.model, self.split, self.tokenizer, self.mesh = model, split, tokenizer, mesh
    self.batch_size, self.data_kw, self.template_sets = batch_size, data_kw, dict(template_sets)

    def correct(params, batch, feats):  # feats: [S, C, D] -> correct counts [S]
      img = zeroshot.image_features(model, params, batch["image"])
      pred = jnp.argmax(jnp.einsum("bd,scd->sbc", img, feats), -1)
      return jnp.sum((pred == batch["label"][None]) & batch["mask"][None], axis=1)

    self._correct = jax.jit(correct)

  def __call__(self, params) -> dict[str, float]:
    feats = jnp.stack([zeroshot.class_text_features(self.model, params, self.split.class_names, self.tokenizer,
                                                    templates) for templates in self.template_sets.values()])
    total = np.zeros(len(self.template_sets), np.int64)
    for local in pipeline.eval_batches(self.split, global_batch_size=self.batch_size, **self.data_kw):
      total += np.asarray(self._correct(params, parallel.shard_batch(local, self.mesh), feats))
    return {name: float(c) / self.split.num_examples for name, c in zip(self.template_sets, total)}


def outputs(workdir) -> dict[str, Path]:
  """Where the pretrain stage keeps its outputs: ``clip`` (the HF-format checkpoint that model.checkpoint =
  "pretrain" means), ``snapshots`` (``epoch_NNN/`` of pretrain.snapshot_epochs), ``checkpoints``."""
  d = stages.directory(workdir, "pretrain")
  return {"dir": d, "clip": d / "clip", "snapshots": d / "snapshots", "checkpoints": d / "checkpoints"}


def run(config, workdir: str | Path, *, splits, mesh, writer) -> Path:
  """Pretrains (resumably) and returns the directory of the HF-format checkpoint."""
  p = config.pretrain
  out = outputs(workdir)
  final = out["clip"]
  if (final / "model.safetensors").exists():
    logging.info("[pretrain] complete: reusing %s", final)
    return final
  split, test = _pretrain_split(p, splits), splits.get("test")
  cfg = presets.get_preset(p.preset, dtype=config.model.dtype)
  model = clip_lib.CLIP(cfg)
  tokenizer = Tokenizer(context_length=cfg.text.context_length)
  bank = captions_lib.bank(split.class_names, tokenizer, p.captions)
  data_kw = image_spec(config.data, cfg.vision.image_size).pipeline_kw()
  spe = pipeline.steps_per_epoch(split, p.batch_size)
  total = p.epochs * spe
  rules = [(".*", 1.0)]
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  tx, schedules = optim.make_optimizer(abstract, rules, optim=p.optim, schedule=p.schedule, total_steps=total,
                                       steps_per_epoch=spe)

  warm = _warm_start(p, model, abstract, cfg)

  def init(rng):
    k_init, k_train = jax.random.split(rng)
    params = clip_lib.init_params(model, k_init) if warm is None else jax.tree.map(jnp.asarray, warm)
    return {"step": jnp.int32(0), "rng": jax.random.key_data(k_train), "params": params,
            "opt_state": tx.init(params)}


  def batches(epoch, start):
    return pipeline.train_batches(split, global_batch_size=p.batch_size, seed=config.seed + 1, epoch=epoch,
                                  start_step=start, augment=p.augment, **data_kw)

  evaluate = None
  if test is not None:
    evaluate = ZeroShotEval(model, test, tokenizer, mesh=mesh, batch_size=p.batch_size, data_kw=data_kw,
                            template_sets={"ensemble": zeroshot.TEMPLATES, "single": (zeroshot.ZERO_SHOT_TEMPLATE,)})

  snapshots = _snapshot_epochs(p)

  def on_epoch_end(st, epoch):
    # The last epoch is evaluated once, after the loop; 0 = no periodic evaluation.
    every = int(p.eval_every_epochs or 0)
    scalars = {}
    if (epoch + 1) in snapshots and epoch + 1 < p.epochs:
      snap = out["snapshots"] / f"epoch_{epoch + 1:03d}"
      if not (snap / "model.safetensors").exists():
        accs = evaluate(st["params"]) if evaluate is not None else {}
        _export(snap, parallel.to_host(st["params"]), cfg, {
            **record, "epochs": epoch + 1, "of_epochs": p.epochs, "zero_shot_accuracy_ensemble": accs.get("ensemble"),
            "zero_shot_accuracy_single_template": accs.get("single"), "steps": int(st["step"])})
        if accs:
          scalars["zero_shot_accuracy"] = accs["ensemble"]
    elif evaluate is not None and every and not (epoch + 1) % every and epoch + 1 != p.epochs:
      scalars["zero_shot_accuracy"] = evaluate(st["params"])["ensemble"]
    return scalars or None

  step_fn = make_step(model, bank, tx, multi_positive=bool(p.multi_positive), lr_fn=schedules["g0"],
                      fixed_logit_scale=float(p.logit_scale))
  record = _record(p, split, bank)
  with StageCheckpointer(out["checkpoints"], every_steps=config.checkpoint_every_steps) as ckpt:
    state, sh = train_state.create(init, jax.random.key(config.seed + 1), mesh=mesh,
                                   sharding_rules=config.sharding_rules, checkpointer=ckpt)
    state = loop.run(loop.LoopConfig.of("pretrain", p.epochs, spe, config), state,
                     train_state.jit_step(step_fn, sh, mesh), batches, mesh=mesh, writer=writer, checkpointer=ckpt,
                     on_epoch_end=on_epoch_end)
  params = parallel.to_host(state["params"])
  accs = {}
  if evaluate is not None:
    accs = evaluate(state["params"])
    logging.info("[pretrain] zero-shot test accuracy %.4f (template ensemble), %.4f (one template)",
                 accs["ensemble"], accs["single"])
    writer.write_scalars(int(state["step"]), {"pretrain/zero_shot_accuracy": accs["ensemble"],
                                              "pretrain/zero_shot_accuracy_single_template": accs["single"]})
  _export(final, params, cfg, {
      **record, "epochs": p.epochs,
      "zero_shot_accuracy_ensemble": accs.get("ensemble"),
      "zero_shot_accuracy_single_template": accs.get("single"), "steps": int(state["step"])})
  return final


def _pretrain_split(p, splits):
  """The split ``pretrain.split`` names (pretraining on the audited labels themselves is warned about)."""
  if p.split not in splits:
    raise ConfigError(
        f"pretrain.split={p.split!r} is not a split of this dataset (it has {sorted(splits)}). Give a clean "
        "pretraining set with data.pretrain_root=<folder of class subfolders> or data.pretrain_file=<csv of "
        "path,label> (the same class names), or set pretrain.split=train to pretrain on the labels being audited "
        "(noisy: the CLIP then learns their errors).")
  if p.split == "train":
    logging.warning("[pretrain] pretraining on the train split's own labels, the ones this run audits: the CLIP "
                    "learns their errors (data.pretrain_root / data.pretrain_file name a clean set instead)")
  return splits[p.split]


def _record(p, split, bank: captions_lib.CaptionBank) -> dict:
  """What pretrain_info.json says of how the CLIP was made (the epochs and accuracy are added)."""
  return {"preset": p.preset, "split": split.name, "num_examples": split.num_examples, "init": p.init or "random",
          "captions": {"kind": p.captions.kind, **bank.describe()},
          "logit_scale": "learned (clamped at 100)" if not p.logit_scale else f"fixed at {p.logit_scale}"}


def _warm_start(p, model, abstract, cfg):
  """The parameters of the CLIP ``pretrain.init`` names (a checkpoint of the same preset: pretraining goes on
  from it), or None for a random init."""
  if not p.init:
    return None
  ckpt_cfg = clip_weights.config_from_checkpoint(p.init)
  if (ckpt_cfg.vision, ckpt_cfg.text, ckpt_cfg.embed_dim) != (cfg.vision, cfg.text, cfg.embed_dim):
    raise ConfigError(f"pretrain.init={p.init!r} is not a {p.preset!r} CLIP (its towers differ); pretraining can "
                      "only go on from a checkpoint of pretrain.preset")
  logging.info("[pretrain] starting from the weights of %s", p.init)
  return clip_weights.load_pretrained(p.init, abstract, scan=cfg.scan)


def _snapshot_epochs(p) -> set:
  snapshots = {int(e) for e in (p.get("snapshot_epochs") or ())}
  bad = sorted(e for e in snapshots if not 1 <= e <= p.epochs)
  if bad:
    raise ConfigError(f"pretrain.snapshot_epochs {bad} lie outside the {p.epochs} pretraining epochs")
  return snapshots


def _export(directory: Path, params, cfg, info: dict) -> None:
  """An HF-format checkpoint (weights, config, tokenizer files, pretrain_info.json), written whole or not at
  all: it is assembled in a temporary sibling that is renamed into place. Written by process 0; every process
  calls it and returns once it is in place (the next stages of every process load it)."""
  if jax.process_index() == 0:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
      with writing(directory, "the pretrained CLIP"):
        clip_weights.save_hf_checkpoint(tmp, params, cfg)
        for name in ("vocab.json", "merges.txt"):
          shutil.copy(DEFAULT_DIR / name, tmp / name)
        (tmp / "pretrain_info.json").write_text(json.dumps(info, indent=2))
        tmp.replace(directory)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    logging.info("[pretrain] exported %s (zero-shot %s)", directory, info.get("zero_shot_accuracy_ensemble"))
  parallel.sync_processes(f"exported {directory.name}")
