"""Phase 1 driver: trains the DEFT detector (detect/detector.py) resumably on the train split, returns the clean
mask and writes the stage's outputs.

Config section ``detect`` (defaults in deft_jax/config_lib.py): ``epochs``, ``warmup_epochs``, ``batch_size``,
``optim``/``schedule`` (see deft_jax.optim), ``n_ctx``, ``ctx_init``, ``ctx_init_pad``, ``class_specific``,
``class_token_position``, ``peft`` (models.peft.PEFTConfig fields), ``trainable`` (optimiser rules; None means
prompts + the PEFT parameters, everything pretrained frozen), ``strict_selection``, ``warmup_loss``,
``pseudo_labels_from_epoch`` (the first epoch whose L_neg uses pseudo-labels, counted from 1 as the progress
lines count; None = the first epoch after warm-up; the real-world datasets use 2), ``final_mask`` ("online":
the selection made during the last epoch, the method's definition; "scoring_pass": a final pass without
augmentation), ``scoring_pass``, ``text_chunk``, ``text_prefix_sharing``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from deft_jax import loop, parallel, stages
from deft_jax.checkpoint import StageCheckpointer, load_npz, save_npz
from deft_jax.data import pipeline
from deft_jax.detect import detector as detector_lib
from deft_jax.detect import scoring
from deft_jax.detect import step as detect_step
from deft_jax.errors import ConfigError
from deft_jax.report import metrics as report_metrics
from deft_jax.report.inputs import check_finite_outputs
from deft_jax.tree import flatten, unflatten

OUTPUT_FILE = "detection.npz"
LEARNED_PARAMS_FILE = "learned_params.npz"


# detect.ranking: the report's ``score``. "margin" (s+_y - s-_y, whose sign is the loose rule's mask),
# "label_probability" (log softmax of s+ at the given label), "strict_margin" (min(m_y, m_y - max_{k != y} m_k),
# m = s+ - s-: positive exactly where the strict rule selects). The last two come from the scoring pass.
RANKINGS = ("margin", "label_probability", "strict_margin")
PRED_PROBS = ("auto",) + detect_step.PRED_PROBS_MODES


def label_probability(pred_probs, labels) -> tuple[np.ndarray, np.ndarray]:
  """(p, log p) of the given label from saved [N, C] class probabilities (pred_probs.npy), in their dtype (the
  log floored at 1e-30). The detect stage itself ranks by the log-softmax of the logits (score_batch's
  ``log_p_label``): float32 probabilities round to 1 (log p = 0) for confident examples at a real CLIP's scale."""
  p = np.asarray(pred_probs)[np.arange(len(labels)), np.asarray(labels)]
  return p, np.log(np.maximum(p, 1e-30))


def label_score(margin, logit_scale: float) -> np.ndarray:
  """sigma(margin / exp(logit_scale)) = sigma(cos(x, pos_y) - cos(x, neg_y)): the two-way probability at unit
  temperature. p_clean = sigma(margin) saturates to exactly 0 or 1 in float32 once |margin| > ~17 (a real
  CLIP's logit scale is 100), which would tie the most confident examples; this score is in [0, 1], monotone
  in the margin (the ranking), free of ties in practice, and > 0.5 exactly where p_clean is."""
  m = np.asarray(margin, np.float64) / float(logit_scale)
  return (1.0 / (1.0 + np.exp(-m))).astype(np.float32)


def apply_ranking(result: dict, ranking: str, logit_scale: float) -> None:
  """Sets ``score`` and ``label_score`` (and their ``pass_`` copies) by ``ranking`` from the scoring pass; the
  mask stays DEFT's. "margin" leaves them as they are."""
  if ranking == "label_probability":  # the positive prompts' classifier's p(given label)
    log_p = np.asarray(result["pass_log_p_label"], np.float32)
    result["label_score"] = result["pass_label_score"] = np.exp(log_p.astype(np.float64)).astype(np.float32)
    result["score"] = result["pass_score"] = log_p
  elif ranking == "strict_margin":
    s = np.asarray(result["pass_strict_margin"], np.float32)
    result["label_score"] = result["pass_label_score"] = label_score(s, logit_scale)
    result["score"] = result["pass_score"] = s


def outputs(workdir) -> dict[str, Path]:
  """Where the detect stage keeps its outputs: ``detection`` (the detector output contract over the train
  split, online and scoring-pass versions, every epoch's mask), ``learned_params`` (exactly the trained
  leaves), ``checkpoints``."""
  d = stages.directory(workdir, "detect")
  return {"dir": d, "detection": d / OUTPUT_FILE, "learned_params": d / LEARNED_PARAMS_FILE,
          "pred_probs": d / "pred_probs.npy", "pred_probs_topk": d / "pred_probs_topk.npy",
          "pred_probs_topk_classes": d / "pred_probs_topk_classes.npy", "features": d / "features.npy",
          "checkpoints": d / "checkpoints"}


def score_split(detector: detector_lib.Detector, params, split, *, batch_size: int, data_kw: dict,
                with_embedding: bool = False, directory: Optional[Path] = None, pred_probs: Optional[str] = None,
                topk: int = 5, batches=None) -> dict[str, np.ndarray]:
  """Detector outputs for every example of ``split``, in index order, without augmentation (detect/scoring.py):
  the per-example scalars, and with ``with_embedding`` the [N, D] ``embedding`` and the class probabilities
  (``pred_probs``: "full" [N, C], "topk" (the ``topk`` largest), "none"; default "full" with the embedding),
  written to ``directory``'s ``.npy`` files as the batches are scored (held in host memory without one).
  ``batches``: host-local batches to score instead of the split's eval pipeline (a synthetic reader)."""
  if pred_probs is None:
    pred_probs = "full" if with_embedding else "none"
  outputs = detect_step.ScoreOutputs(embedding=with_embedding, pred_probs=pred_probs, topk=int(topk))
  text = detector.jit_text_features(params)(params)  # once: the prompts are fixed during the pass
  fn = detector.jit_score_images(params, outputs)
  if batches is None:
    batches = pipeline.eval_batches(split, global_batch_size=batch_size, **data_kw)
  return scoring.score_batches(fn, params, text, batches, detector.mesh, split.num_examples, directory=directory)


EXPORTED = ("pred_probs", "pred_probs_topk", "pred_probs_topk_classes", "features")


def pred_probs_summary(config, num_examples: int, num_classes: int, files) -> dict:
  """The report's record of which class probabilities it holds (summary.json "pred_probs")."""
  mode = pred_probs_mode(config, num_examples, num_classes)
  out = {"mode": mode, "setting": config.report.get("pred_probs", "auto"),
         "files": sorted(f for f in files if f.startswith("pred_probs")),
         "full_bytes": 4 * num_examples * num_classes}
  if mode == "topk":
    out["k"] = min(int(config.report.get("pred_probs_topk", 5)), num_classes)
  return out


def pred_probs_mode(config, num_examples: int, num_classes: int) -> str:
  """report.pred_probs, with "auto" resolved: "full" while the [N, C] float32 file stays within
  report.pred_probs_full_max_gb, else "topk" (docs: README "Class probabilities at scale")."""
  mode = config.report.get("pred_probs", "auto")
  if mode != "auto":
    return mode
  limit = float(config.report.get("pred_probs_full_max_gb", 8.0)) * 2**30
  return "full" if 4.0 * num_examples * num_classes <= limit else "topk"


def run(config, workdir: str | Path, *, train_split, mesh, writer, checkpoint: Optional[str] = None,
        clip=None) -> dict:
  """Trains the detector (resuming if possible) and returns the detection outputs over the train split.
  ``clip``: the run's CLIP (classify.run_clip.RunCLIP); without it, the one of ``config`` and ``checkpoint``."""
  out = outputs(workdir)
  out_file = out["detection"]
  if out_file.exists():
    logging.info("[detect] complete: reusing %s", out_file)
    return load_npz(out_file)
  d = config.detect
  ranking = d.ranking
  if ranking not in RANKINGS:
    raise ConfigError(f"detect.ranking must be one of {RANKINGS}, got {ranking!r}")
  if ranking != "margin" and not (d.scoring_pass or d.final_mask == "scoring_pass"):
    raise ConfigError(f"detect.ranking={ranking!r} reads the scoring pass's logits: set detect.scoring_pass=True, "
                      "or detect.ranking='margin', the one ranking a run without a scoring pass has")
  spe = pipeline.steps_per_epoch(train_split, d.batch_size)
  det = detector_lib.Detector(config, class_names=train_split.class_names, num_examples=train_split.num_examples,
                              mesh=mesh, checkpoint=checkpoint, steps_per_epoch=spe, clip=clip)
  data_kw = det.clip.inputs.pipeline_kw()
  clean = train_split.clean_labels

  def batches(epoch, start):
    return pipeline.train_batches(train_split, global_batch_size=d.batch_size, seed=config.seed, epoch=epoch,
                                  start_step=start, augment=config.data.train_augment, **data_kw)

  def on_epoch_end(st, epoch):
    online = parallel.to_host({k: v for k, v in st["online"].items() if k != "epoch_selected"})
    scalars = {"selected_fraction": float(online["selected"].mean())}
    writer.write_histograms(int(st["step"]), {"detect/p_clean": online["p_clean"]})
    if clean is not None:
      m = report_metrics.detection_metrics(online["selected"], train_split.labels, clean)
      scalars.update({k: float(m[k]) for k in ("precision", "recall", "f1")})
    return scalars

  with StageCheckpointer(out["checkpoints"], every_steps=config.checkpoint_every_steps) as ckpt:
    state = det.init_state(jax.random.key(config.seed), checkpointer=ckpt)
    state = loop.run(loop.LoopConfig.of("detect", d.epochs, spe, config), state, det.jit_train_step(state),
                     batches, mesh=mesh, writer=writer, checkpointer=ckpt, on_epoch_end=on_epoch_end)
  online = parallel.to_host(state["online"])
  result = {"epoch_is_clean": np.asarray(online.pop("epoch_selected"))}
  result.update({"online_" + k: np.asarray(v) for k, v in online.items()})
  result["online_is_clean"] = result.pop("online_selected")
  if d.final_mask not in ("online", "scoring_pass"):
    raise ConfigError(f"detect.final_mask must be 'online' or 'scoring_pass', got {d.final_mask!r}")
  export = bool(config.report.get("export_arrays", True))
  if d.scoring_pass or d.final_mask == "scoring_pass" or export:
    mode = pred_probs_mode(config, train_split.num_examples, len(train_split.class_names)) if export else "none"
    scored = score_split(det, state["params"], train_split, batch_size=d.eval_batch_size or d.batch_size,
                         data_kw=data_kw, with_embedding=export, pred_probs=mode,
                         topk=int(config.report.get("pred_probs_topk", 5)), directory=out["dir"] if export else None)
    scored.pop("label_prob")  # its float32 value rounds to 1 for confident examples: the ranking reads log_p_label
    for k in detect_step.ROW_ARRAYS:  # in out["dir"]'s .npy files, which the report copies
      scored.pop(k, None)
    result.update({"pass_" + k: v for k, v in scored.items()})
  scale = float(np.exp(np.asarray(parallel.to_host(state["params"]["clip"]["logit_scale"]), np.float64)))
  for prefix in ("online_", "pass_"):
    if prefix + "margin" in result:
      result[prefix + "label_score"] = label_score(result[prefix + "margin"], scale)
      result[prefix + "score"] = np.asarray(result[prefix + "margin"], np.float32)
  src = "pass_" if d.final_mask == "scoring_pass" else "online_"
  for k in ("p_clean", "is_clean", "suggested", "margin", "label_score", "score"):
    result[k] = result[src + k]
  apply_ranking(result, ranking, scale)
  result["params_step"] = np.asarray(int(state["step"]))
  check_finite_outputs(result, "detect")
  save_npz(out_file, result)
  save_learned_params(out["learned_params"], state["params"], det.mask)
  return result


def with_learned_params(params, learned: dict) -> dict:
  """``params`` ({"clip", "prompts"}, e.g. a fresh detector's) with the leaves of a ``learned_params`` file in
  place (host arrays): the trained detector again, for scoring outside the detect stage."""
  flat = {k: np.asarray(v) for k, v in flatten(parallel.to_host(params)).items()}
  unknown = sorted(set(learned) - set(flat))
  if unknown:
    raise ConfigError(f"learned parameters {unknown[:5]} are not parameters of this detector (another config?)")
  for k, v in learned.items():
    if np.shape(v) != flat[k].shape:
      raise ConfigError(f"learned parameter {k} has shape {np.shape(v)}, the detector's is {flat[k].shape}")
    flat[k] = np.asarray(v, flat[k].dtype)
  return unflatten(flat)


def save_learned_params(path: Path, params, mask) -> None:
  """Exactly the leaves phase 1 trained (the optimiser mask: prompts, PEFT parameters, BitFit biases, anything
  ``detect.trainable`` names), for the 'no adaptation' classifier and for reuse."""
  trained = flatten(mask)
  save_npz(path, {k: np.asarray(v) for k, v in flatten(parallel.to_host(params)).items() if trained[k]})
