"""Runs the configured stages in order: pretrain -> detect (+ baselines, report) -> adapt -> evaluate.

Each stage resumes from its own checkpoints and is skipped when its outputs already exist, so rerunning the
same command after a crash or preemption continues the run; a workdir that holds another configuration is
refused (checkpoint.check_workdir).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
from clu import metric_writers

from deft_jax import checkpoint as ckpt_lib
from deft_jax import config_check, config_lib, parallel, stages
from deft_jax.data import datasets
from deft_jax.errors import ConfigError, MissingFileError
from deft_jax.tree import flatten

TRAIN_ON = ("deft", "all", "clean_oracle")  # and any baseline of deft_jax/baselines/


def _hparams(config) -> dict[str, Any]:
  flat = flatten(ckpt_lib.config_to_dict(config), sep=".")
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def check_stages(config) -> list[str]:
  unknown = [s for s in config.stages if s not in stages.STAGE_ORDER]
  if unknown:
    raise ConfigError(f"unknown stage(s) {unknown} in config.stages; known: {list(stages.STAGE_ORDER)}")
  return [s for s in stages.STAGE_ORDER if s in config.stages]


def run(config, workdir: str | Path) -> dict:
  """Runs every configured stage; returns a summary dict (also in workdir/summary.json)."""
  t0 = time.time()
  if "://" in str(workdir):  # pathlib would turn gs://b/w into a local directory "gs:/b/w", silently
    raise ConfigError(f"--workdir {workdir}: URLs are not supported as workdirs; use a directory of a file system "
                      "that every process of the run mounts at the same path (launch/README.md)")
  config_check.check(config, process_count=jax.process_count())  # before any stage, before the workdir is touched
  config_lib.shortened(config)  # report.shortened: names fields that exist and differ from the method's
  todo = check_stages(config)
  if config.data.corrections:  # its form before anything is written; its rows are checked against the data
    from deft_jax.data import corrections
    corrections.read(config.data.corrections)
  workdir = parallel.make_shared_workdir(workdir)  # a multi-process run: every process must see the same files
  # The config is recorded once the data has loaded: a corrections file that does not fit the data stops the run
  # with nothing written.
  ckpt_lib.check_workdir(workdir, config, record=False)
  mesh = parallel.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)

  data_cfg = config.data.to_dict()
  if data_cfg.get("balanced_subset") and not data_cfg.get("balanced_subset_file"):
    data_cfg["balanced_subset_file"] = str(workdir / "balanced_subset.npz")  # drawn once, kept with the run
  splits = _load_data(data_cfg, workdir)
  ckpt_lib.record_config(workdir, config)
  writer = metric_writers.create_default_writer(str(workdir / "tensorboard"), just_logging=jax.process_index() > 0)
  writer.write_hparams(_hparams(config))
  train = splits["train"]
  logging.info("data: %s", ", ".join(f"{k}={v.num_examples}" for k, v in splits.items()))
  if train.noise_rate() is not None:
    logging.info("train split: %d classes, true noise rate %.4f", train.num_classes, train.noise_rate())

  summary: dict[str, Any] = {"workdir": str(workdir), "stages": todo}
  if train.corrections is not None:
    summary["corrections"] = train.corrections
  checkpoint = _pretrain(config, workdir, todo, splits=splits, mesh=mesh, writer=writer, summary=summary)
  from deft_jax.classify.run_clip import RunCLIP
  from deft_jax.detect import train as detect_train
  clip = RunCLIP(config, checkpoint)  # the run's CLIP, made once for every stage that follows
  detection = None
  detection_file = detect_train.outputs(workdir)["detection"]
  if "detect" in todo:
    detection = detect_train.run(config, workdir, train_split=train, mesh=mesh, writer=writer, clip=clip)
    from deft_jax import baselines
    compared = baselines.run_configured(config, train, mesh=mesh, clip=clip, workdir=workdir, writer=writer,
                                        eval_splits=_eval_splits(splits))
    summary["detection"] = write_report(config, workdir, train, detection, compared, writer)
  elif detection_file.exists():
    detection = ckpt_lib.load_npz(detection_file)

  if "adapt" in todo or "evaluate" in todo:
    summary["adapt"] = _phase2(config, workdir, detection, splits=splits, mesh=mesh, writer=writer, clip=clip)
  summary["seconds"] = round(time.time() - t0, 1)
  if jax.process_index() == 0:
    print(final_lines(summary, workdir), flush=True)
  writer.flush()
  writer.close()
  ckpt_lib.write_json(workdir / "summary.json", summary, default=_json_default)
  return summary


def _pretrain(config, workdir: Path, todo, *, splits, mesh, writer, summary: dict) -> Optional[str]:
  """The pretrain stage when configured; returns the run's CLIP checkpoint (its own with model.checkpoint =
  'pretrain')."""
  from deft_jax.pretrain import train as pretrain_train
  checkpoint = config.model.checkpoint or None
  if checkpoint == "pretrain":  # the CLIP this run's pretrain stage makes
    checkpoint = str(pretrain_train.outputs(workdir)["clip"])
  if "pretrain" in todo:
    path = pretrain_train.run(config, workdir, splits=splits, mesh=mesh, writer=writer)
    info = path / "pretrain_info.json"
    if info.exists():
      summary["pretrain"] = json.loads(info.read_text())
  elif config.model.checkpoint == "pretrain" and not (Path(checkpoint) / "model.safetensors").exists():
    raise MissingFileError(f"model.checkpoint='pretrain' but {checkpoint} does not exist: add 'pretrain' to "
                            "config.stages or point model.checkpoint at a CLIP checkpoint")
  return checkpoint


def _phase2(config, workdir: Path, detection: Optional[dict], *, splits, mesh, writer, clip) -> dict:
  """Phase 2 on the selection ``adapt.train_on`` names (computed here, unless phase 2 is complete)."""
  from deft_jax import adapt
  from deft_jax.adapt import train as adapt_train
  from deft_jax.detect import train as detect_train
  trains = adapt.trains(config)
  if config.adapt.train_on == "deft" and detection is None and trains:
    raise MissingFileError(f"adapt.train_on='deft' needs the detect stage's output "
                           f"({detect_train.outputs(workdir)['detection']}): add 'detect' to config.stages")
  mask = None
  if trains and not adapt_train.outputs(workdir)["results"].exists():  # a finished phase 2 is reused as it is
    mask = train_mask(config, splits["train"], detection, mesh=mesh, clip=clip, workdir=workdir, writer=writer,
                      eval_splits=_eval_splits(splits))
  return adapt_train.run(config, workdir, splits=splits, mesh=mesh, writer=writer, clip=clip, mask=mask,
                         phase1_params=detect_train.outputs(workdir)["learned_params"])


def train_mask(config, train_split, detection: Optional[dict], *, mesh, clip, workdir=None, writer=None,
               eval_splits=None) -> np.ndarray:
  """bool [N]: the training examples phase 2 uses under ``config.adapt.train_on`` (DEFT's selection, every
  label, the clean oracle's, or a baseline's, computed here when the report did not compare it already)."""
  from deft_jax import baselines
  on = config.adapt.train_on
  n = train_split.num_examples
  if on == "deft":
    if detection is None or "is_clean" not in detection:
      raise ConfigError("adapt.train_on='deft' needs the detector's output (run the detect stage first)")
    mask = np.asarray(detection["is_clean"], bool)
  elif on == "all":
    mask = np.ones(n, bool)
  elif on == "clean_oracle":
    if train_split.clean_labels is None:
      raise ConfigError(f"adapt.train_on='clean_oracle' needs clean labels; {train_split.name} has none")
    mask = (train_split.clean_labels >= 0) & (train_split.labels == train_split.clean_labels)
  elif on in baselines.available():
    out = baselines.run(on, config, train_split, mesh=mesh, clip=clip, workdir=workdir, writer=writer,
                        eval_splits=eval_splits)
    mask = np.asarray(out["is_clean"], bool)
  else:
    raise ConfigError(f"unknown adapt.train_on {on!r}; choose one of {list(TRAIN_ON) + baselines.available()}")
  if mask.shape != (n,):
    raise ConfigError(f"the {on!r} selection has shape {mask.shape}, the train split has {n} examples")
  if not mask.any():
    raise ConfigError(f"the {on!r} selection is empty: nothing to fine-tune on")
  return mask


def _load_data(data_cfg: dict, workdir: Path) -> dict:
  """The run's splits. The files a run draws once and keeps (its noisy labels, a balanced subset) are drawn by
  process 0 alone; the other processes start after it and read them, so that all train on the same labels."""
  lead = jax.process_index() == 0
  if lead:
    splits = datasets.get_dataset(data_cfg, noisy_labels_path=workdir / "noisy_labels.npz")
  parallel.sync_processes("drew the run's data files")
  if not lead:
    splits = datasets.get_dataset(data_cfg, noisy_labels_path=workdir / "noisy_labels.npz")
  return splits


def final_lines(summary: dict, workdir: Path) -> str:
  """The last lines a run prints: where the results are, and phase 2's test accuracy."""
  lines = [f"deft_jax finished in {summary['seconds'] / 60:.1f} min; outputs in {workdir}"]
  if "detection" in summary:
    lines.append(f"  label issues: {summary['detection']['report']}/label_issues.csv "
                 f"(estimated noise {100 * summary['detection']['estimated_noise_rate']:.1f}%)")
  a = summary.get("adapt")
  if a:
    what = a["method"] + (f" on the {a['train_on']} selection ({a['num_selected']} of {a['num_train']} examples)"
                          if "train_on" in a else "")
    for split in ("test", "test2"):
      if isinstance(a.get(split), dict) and a[split].get("top1") is not None:
        top5, best = a[split].get("top5"), a[split].get("best_top1")
        lines.append(f"  phase 2 ({what}): {split} top-1 {100 * a[split]['top1']:.2f}%"
                     + (f" (best {100 * best:.2f}% at epoch {a[split]['best_epoch']:g})" if best is not None else "")
                     + (f", top-5 {100 * top5:.2f}%" if top5 is not None else ""))
  lines.append(f"  TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
  return "\n".join(lines)


def _json_default(x):
  if isinstance(x, (np.generic,)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def pretrained_on_audited_labels(config) -> bool:
  """Whether this run's CLIP comes from its own pretrain stage trained on the train split itself."""
  return config.model.checkpoint == "pretrain" and config.pretrain.split == "train"


def _eval_splits(splits) -> dict:
  return {k: splits[k] for k in ("test", "test2") if k in splits}


def write_report(config, workdir: Path, train, detection: dict, compared: dict, writer) -> dict:
  """Writes workdir/report/, logs the health summary, and adds summaries to TensorBoard; ``compared`` holds the
  baselines' outputs by name."""
  from deft_jax import baselines
  from deft_jax.detect import train as detect_train
  from deft_jax.report import build_and_write_report
  from deft_jax.report import metrics as report_metrics
  from deft_jax.report.plots import suspects_grid_array
  from deft_jax.report.summary import vlm_warnings

  comparison = {}
  if train.clean_labels is not None:
    known = train.clean_labels >= 0  # -1: no ground truth for this example (e.g. most of Clothing1M)
    truly_clean = train.labels == train.clean_labels

    def quality(is_clean, score=None):  # score: the ranking score (higher = more likely clean)
      m = report_metrics.detection_metrics(is_clean, train.labels, train.clean_labels)
      out = {k: float(m[k]) for k in ("precision", "recall", "f1")}
      if score is not None:
        out["auroc"] = float(report_metrics.auroc(score, truly_clean, mask=known))
      return out

    # The selected method itself is the report's headline; here go the alternatives it is compared with.
    if "pass_is_clean" in detection and config.detect.final_mask != "scoring_pass":
      comparison["DEFT (scoring pass)"] = quality(detection["pass_is_clean"], detection["pass_score"])
    if "online_is_clean" in detection and config.detect.final_mask == "scoring_pass":
      comparison["DEFT (online, last epoch)"] = quality(detection["online_is_clean"], detection["online_score"])
    for k, v in compared.items():
      comparison[baselines.display_name(k)] = quality(v["is_clean"], v["score"])
      if "test_top1" in v:  # the baselines whose own model classifies (GMM, TURN's probe, VLPT)
        comparison[baselines.display_name(k)]["test_top1"] = float(v["test_top1"])
    comparison["keep every label"] = quality(np.ones(train.num_examples, bool))
  extra = {"baselines": comparison} if comparison else {}
  extra["phase1_recipe"] = config_lib.phase1_recipe(config)
  extra["ranking"] = config.detect.ranking
  shortened = config_lib.shortened(config)
  if shortened:
    extra["shortened"] = shortened
  if train.corrections is not None:
    extra["corrections"] = train.corrections
  if train.noise_report is not None and hasattr(train.noise_report, "summary"):
    extra["noise"] = train.noise_report.summary()
  zero_shot = compared["label_match"]["suggested"] if "label_match" in compared else None
  warnings = vlm_warnings(train.labels, detection["suggested"], train.num_classes, zero_shot=zero_shot)
  if pretrained_on_audited_labels(config):
    warnings.append("the CLIP was pretrained on the very labels this report audits (pretrain.split='train'): it "
                    "has learned their errors, which hides them from the detector. Give a clean pretraining set "
                    "(data.pretrain_root or data.pretrain_file) for a fair audit.")
  for w in warnings:
    logging.warning("%s", w)
  if warnings:
    extra["warnings"] = warnings
  image_fn = (lambda idx: train.load_images(idx)) if config.report.write_images else None
  files = detect_train.outputs(workdir)
  arrays = {files[key].name: files[key] for key in detect_train.EXPORTED
            if config.report.export_arrays and files[key].exists()}  # the report copies the files, in blocks
  if config.report.export_arrays:
    extra["pred_probs"] = detect_train.pred_probs_summary(config, train.num_examples, train.num_classes, arrays)
  lead = jax.process_index() == 0  # one writer; the other processes hold the same detection
  table, summary, text = build_and_write_report(
      stages.directory(workdir, "report"), detection, given=train.labels, class_names=train.class_names,
      arrays=arrays, clean_labels=train.clean_labels, ids=train.ids, image_fn=image_fn, extra_summary=extra,
      review_top_k=config.report.review_top_k if config.report.review else None, write=lead)
  parallel.sync_processes("wrote the report")
  step = int(detection.get("params_step", 0))
  scalars = {f"report/{_slug(name)}/{k}": v for name, d in comparison.items() for k, v in d.items()
             if np.isfinite(v)}
  writer.write_scalars(step, scalars)
  if image_fn is not None and lead:  # the other processes' writers only log
    grid = suspects_grid_array(table, image_fn, num=16, cols=4)
    if grid is not None:
      writer.write_images(step, {"report/suspects": grid})
  writer.write_histograms(step, {"report/p_clean": np.asarray(detection["p_clean"])})
  if lead:
    print(text, flush=True)
  return {"comparison": comparison, "estimated_noise_rate": float(1 - np.mean(detection["is_clean"])),
          "phase1_recipe": extra["phase1_recipe"], "report": str(stages.directory(workdir, "report"))}


def _slug(name: str) -> str:
  """'CLIP label-match' -> 'clip_label_match' (a TensorBoard tag component)."""
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")

