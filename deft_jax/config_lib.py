"""The full run configuration with the method's defaults; every configs/<dataset>.py starts from here.

Stages run in this order, each only if listed in ``stages``: pretrain (a small CLIP for offline work),
detect (phase 1, DEFT), adapt (phase 2, fine-tuning on the clean subset), evaluate (test accuracy), and the
report is written whenever detection results exist. Every field can be overridden on the command line,
e.g. ``--config.detect.epochs=3``; unknown fields are an error.
"""

import dataclasses
from typing import Optional

import ml_collections
from ml_collections import config_dict

from deft_jax.data.config import default_data_config
from deft_jax.models.peft import PEFTConfig
from deft_jax.stages import STAGE_ORDER  # noqa: F401  (re-exported: the values config.stages takes)
from deft_jax.errors import ConfigError, MissingFileError


def peft_config(**fields) -> dict:
  """A ``peft`` section: every PEFTConfig field (models/peft.py) with its default, ``fields`` overriding them."""
  d = dataclasses.asdict(PEFTConfig(**fields))
  d["lora_targets"] = tuple(d["lora_targets"])
  if d["partial"] is None:
    d["partial"] = config_dict.placeholder(int)
  return d


def sgd(**fields) -> dict:
  """An ``optim`` section: the method's SGD (momentum 0.9, weight decay 5e-4, no clipping)."""
  return dict(dict(name="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4,
                   grad_clip_norm=config_dict.placeholder(float)), **fields)


def cosine(lr: float, **fields) -> dict:
  """A ``schedule`` section: cosine decay to 0 stepped once per epoch (the reference's), no warm-up."""
  return dict(dict(lr=lr, decay="cosine", warmup_steps=0, per_epoch=True, min_lr=0.0), **fields)


def detect_section() -> ml_collections.ConfigDict:
  """The ``detect`` section: phase 1 with the method's defaults."""
  # Phase 1 (method.md): SGD momentum 0.9, lr 0.03, wd 5e-4, batch 64, 16 unified context vectors, VPT-deep
  # with 20 tokens. ``recipe`` names the rest (RECIPES below): "synthetic" (the loose rule, 1 CE warm-up epoch,
  # cosine over 10 epochs stepped once per epoch) or "real_noise" (the strict rule, 5 SCE warm-up epochs,
  # pseudo-labels from epoch 2, constant lr); "" picks real_noise when data.noise.type == "human". The five
  # fields it sets stay None here: a value given for one of them overrides the recipe for that field only.
  return ml_collections.ConfigDict(dict(
      epochs=10, batch_size=64, eval_batch_size=256, recipe="",
      optim=sgd(), schedule=cosine(0.03, decay=config_dict.placeholder(str)),
      # ctx_init: start the contexts from these words (the reference has no such option); it also shrinks them
      # to the words' length unless ctx_init_pad keeps n_ctx (the words last, N(0, 0.02) vectors before them).
      n_ctx=16, ctx_init="", ctx_init_pad=False, class_specific=False, class_token_position="end",
      peft=peft_config(vpt="deep", vpt_tokens=20),
      trainable=config_dict.placeholder(list),
      warmup_epochs=config_dict.placeholder(int), strict_selection=config_dict.placeholder(bool),
      warmup_loss=config_dict.placeholder(str), pseudo_labels_from_epoch=config_dict.placeholder(int),
      # text_chunk > 0: at most that many prompts through the text tower at a time (rematerialised: memory flat in
      # C). text_prefix_sharing: the prompts' shared prefix once per context, then the class suffixes (exact).
      final_mask="online", scoring_pass=True, text_chunk=0, text_prefix_sharing=True,
      # The report's ranking (``score``; the mask stays DEFT's): "label_probability" (the scoring pass's
      # log-softmax of the positive prompts at the given label), "margin" (s+_y - s-_y, whose sign is the loose
      # rule's mask) or "strict_margin" (consistent with the strict rule; detect/train.py). The method defines a
      # mask, not a ranking; label_probability is the default because it ranked above the margin on every cell
      # measured (README.md "Is DEFT first?"). Without a scoring pass only "margin" exists.
      ranking="label_probability",
      # Beyond the method (its defaults keep it; BENCHMARKS.md "Past the paper" measures them): how L_neg draws its
      # complementary class ("uniform", the method's; "hard": from the positive prompts' softmax over the other
      # classes; "mixed": either, half the time each), class-specific negative contexts with the positive one
      # shared, and phase 1's logit scale (0: the CLIP's own; e.g. 100, CLIP's, for a stand-in trained at another).
      negatives="uniform", class_specific_negatives=False, logit_scale=0.0))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("detect", "adapt", "evaluate")

  c.data = default_data_config()

  # CLIP: a HF checkpoint (dir, .safetensors or hub id), "pretrain" (this run's pretrain stage), or "" with a
  # preset for random init. Compute dtype float32 or bfloat16 (parameters stay float32).
  c.model = ml_collections.ConfigDict(dict(
      preset="vit_b16", checkpoint="openai/clip-vit-base-patch16", dtype="float32",
      attention=config_dict.placeholder(str), remat=False, scan=False))

  c.pretrain = ml_collections.ConfigDict(dict(
      split="pretrain", preset="tiny_32px", epochs=30, batch_size=256, augment="cifar", multi_positive=True,
      eval_every_epochs=10, snapshot_epochs=(),
      init="",  # "": random init; a CLIP checkpoint of the same preset (e.g. "standin:cifar10_tiny32") to go on from
      logit_scale=0.0,  # 0: learned (clamped at 100, as CLIP); > 0: fixed at that value, not trained
      # pretrain/captions.py: "templates" (the 12 zero-shot templates) | "varied" (a bank of layouts with fillers)
      captions=dict(kind="templates", size=2048, max_fill=24, template_prob=0.25, soft_prob=0.25, seed=0,
                    per_step=12, soft_std=0.02),
      optim=dict(name="adamw", weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-6),
      schedule=cosine(1e-3, warmup_steps=100, per_epoch=False)))

  c.detect = detect_section()

  # Phase 2 (method.md): FFT of the visual blocks + a new linear head on ln_post(CLS), CE on the clean
  # subset, SGD momentum 0.9, lr 5e-4, wd 5e-4, cosine over 10 epochs stepped per epoch, batch 64 (real-world
  # datasets: epochs=5, schedule.decay="constant"). Fields are documented in deft_jax/adapt/train.py.
  c.adapt = ml_collections.ConfigDict(dict(
      method="fft",  # fft | peft | vlpt | none (phase 1's learned prompts) | zeroshot
      train_on="deft",  # deft | all | clean_oracle | any baseline (deft_jax/baselines/: gmm, turn, ...)
      backbone="clip", backbone_checkpoint="", backbone_optimizer=True,
      # steps > 0: that many optimiser steps whatever the subset size (equal-step comparisons); else epochs.
      # epoch_over: "all" (the reference: each epoch visits all N examples, the loss averaged over the selected
      # ones in each batch) | "selected" (each epoch visits the selected subset only).
      epochs=10, steps=0, epoch_over="all", batch_size=64, eval_batch_size=256, eval_every_epochs=0, augment="",
      optim=sgd(), schedule=cosine(5e-4),
      trainable="blocks",  # blocks (the reference) | all (every visual parameter)
      rules=config_dict.placeholder(list),  # explicit optimiser rules [(regex, None|mult|dict)]: replace trainable
      head_init="random",  # random (the reference) | text (the zero-shot classifier before the projection)
      loss="ce",  # ce | gce | sce | elr
      loss_params=dict(gce_q=0.7, sce_alpha=1.0, sce_beta=1.0, elr_lambda=5.0, elr_beta=0.3),
      # method="peft": the PEFT trained with the head (set schedule.lr to suit it, e.g. 0.03 for VPT).
      peft=peft_config(vpt="deep", vpt_tokens=20),
      zeroshot_templates="ensemble"))  # ensemble | single | [templates]; zero-shot, head_init=text, label-match

  # Comparison detectors (deft_jax/baselines/, one module each): which ones the report computes beside DEFT,
  # the training that small-loss, VLPT, TURN's probe and GMM (model="selector") share (CLIP with VPT-deep and a
  # linear head, as the reference runs small-loss), and each one's own options.
  c.baselines = ml_collections.ConfigDict(dict(
      methods=("label_match",),
      epochs=10, warmup_epochs=1, batch_size=64, eval_batch_size=256,
      optim=sgd(), schedule=cosine(0.03), peft=peft_config(vpt="deep", vpt_tokens=20),
      # rate None: the nominal noise rate (data.noise.ratio), else the train split's known rate.
      small_loss=dict(rate=config_dict.placeholder(float)),
      # model: "phase2" (the reference: phase 2's FFT classifier and recipe) | "selector" (small-loss's model).
      # epochs / warmup_epochs: None = the model's recipe's epochs (adapt.epochs for "phase2") and
      # baselines.warmup_epochs; real_world() sets the reference's 10 and 5 (main_real_baseline.py).
      gmm=dict(model="phase2", epochs=config_dict.placeholder(int), warmup_epochs=config_dict.placeholder(int)),
      # cleanlab_cl: K-fold logistic-regression probe (folds, C); cleanlab_datalab: k nearest neighbours.
      cleanlab=dict(folds=5, C=1.0, knn=10)))

  c.mesh = [("data", -1)]
  c.sharding_rules = []  # e.g. [("token_embedding|encoder/layers", "fsdp")]
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  # export_arrays: pred_probs.npy and features.npy beside label_issues.csv (for cleanlab and notebooks).
  # review: review.html, the page where a person decides on the top review_top_k suspects (report/review.py).
  # pred_probs: the class probabilities exported: "full" [N, C], "topk" (the pred_probs_topk largest and their
  # classes), "none", or "auto": "full" while the float32 [N, C] file is at most pred_probs_full_max_gb GiB (8:
  # ImageNet-1k's 5.1 GB), else "topk" (README, "Class probabilities at scale").
  # shortened: dotted fields this config sets below the method's recipe (a demo, a smoke run); the report
  # prints each with the method's value beside it (config_lib.shortened).
  c.report = ml_collections.ConfigDict(dict(num_suspects=24, write_images=True, export_arrays=True, review=True,
                                            shortened=(), review_top_k=1000, pred_probs="auto", pred_probs_topk=5,
                                            pred_probs_full_max_gb=8.0))
  return c



def paper_config(source: str, *, augment: str = "resize_crop", eval_resize: str = "short_side"):
  """The paper's setting on ``source``: CLIP ViT-B/16 at 224 px, the reference's crop geometry for the dataset
  (CIFAR: "cifar"; Tiny-ImageNet, Cars, CUB: "squash_crop" + "squash"; WebVision: "squash_crop" +
  "squash_center_crop"; Clothing1M: "resize_crop" + "resize_center_crop"; see data/preprocess.py)."""
  c = base_config()
  c.data.source = source
  c.data.image_size = 224
  c.data.train_augment = augment
  c.data.eval_resize = eval_resize
  c.model.preset = "vit_b16"
  c.model.checkpoint = "openai/clip-vit-base-patch16"
  return c


# Phase 1's two recipes, as the reference runs them: main_phase1.py for synthetic noise, main_real_phase1.py
# for human noise (CIFAR-10N, CIFAR-100N, Clothing1M, WebVision). ``pseudo_labels_from_epoch`` None: the first
# epoch after warm-up (counted from 1); ``schedule_decay`` is detect.schedule.decay (real_noise: the reference
# builds a cosine scheduler and never steps it, so its lr stays at 0.03).
RECIPES = {
    "synthetic": dict(strict_selection=False, warmup_epochs=1, warmup_loss="ce", pseudo_labels_from_epoch=None,
                      schedule_decay="cosine"),
    "real_noise": dict(strict_selection=True, warmup_epochs=5, warmup_loss="sce", pseudo_labels_from_epoch=2,
                       schedule_decay="constant"),
}


def recipe_name(config) -> str:
  """``detect.recipe``, or where it is "" (the default): "real_noise" for labels the config says are human
  (``data.noise.type == "human"``), else "synthetic"."""
  name = config.detect.get("recipe", "") or ""
  if name:
    if name not in RECIPES:
      raise ConfigError(f"detect.recipe must be one of {tuple(RECIPES)} or '' (by data.noise.type), got {name!r}")
    return name
  noise = config.get("data", {}).get("noise", {}) if hasattr(config, "get") else {}
  return "real_noise" if noise.get("type") == "human" else "synthetic"


def phase1_recipe(config) -> dict:
  """Phase 1's effective settings: the recipe's, with every field the config sets (not None) taking precedence.

  Returns {"recipe": name, "overrides": {field: value} (the fields set against the recipe's value), and the
  five fields of RECIPES}."""
  name = recipe_name(config)
  d = config.detect
  given = {k: d.get(k) for k in ("strict_selection", "warmup_epochs", "warmup_loss", "pseudo_labels_from_epoch")}
  given["schedule_decay"] = d.get("schedule", {}).get("decay")
  out = dict(RECIPES[name])
  overrides = {k: v for k, v in given.items() if v is not None and v != out[k]}
  out.update({k: v for k, v in given.items() if v is not None})
  return {"recipe": name, "overrides": overrides, **out}


def shortened(config) -> dict:
  """``{field: {"value": this run's, "method": the method's default}}`` for each dotted field that
  ``report.shortened`` names: what a demo or smoke config cut from the method's recipe, as the report says it.
  A named field that is missing, or equals the method's value, is a ConfigError (the list cannot go stale)."""
  method = base_config()
  out = {}
  for field in config.report.get("shortened", ()) or ():
    try:
      value, default = _dotted(config, field), _dotted(method, field)
    except (KeyError, AttributeError) as e:
      raise ConfigError(f"report.shortened names {field!r}, which is not a config field") from e
    if value == default:
      raise ConfigError(f"report.shortened names {field!r}, but it equals the method's value {default!r}")
    out[field] = {"value": value, "method": default}
  return out


def missing_field(config, field: str) -> Optional[tuple[str, list[str]]]:
  """None when the dotted ``field`` ("detect.epochs") is a field of ``config``; else (its deepest part that is
  one, "" for the config itself, and the fields that part has)."""
  node, done = config, []
  for part in field.split("."):
    fields = list(node.keys()) if hasattr(node, "keys") else []
    if part not in fields:
      return ".".join(done), sorted(map(str, fields))
    node, done = node[part], done + [part]
  return None


def set_field(config, field: str, value) -> None:
  """Sets the dotted ``field`` of ``config`` (an override); a field the config does not have is a ConfigError."""
  if missing_field(config, field) is not None:
    raise ConfigError(f"unknown config field {field!r}")
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _dotted(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return tuple(node) if isinstance(node, list) else node


def real_world(c, *, batch_size: int = 64):
  """CIFAR-100N, Clothing1M and WebVision: human label noise, phase 1's real_noise recipe and phase 2's
  real-world schedule (method.md)."""
  c.data.noise.type = "human"
  c.detect.recipe = "real_noise"
  c.detect.batch_size = batch_size
  c.adapt.epochs = 5
  c.adapt.schedule.decay = "constant"
  c.adapt.batch_size = batch_size
  # The GMM baseline (main_real_baseline.py, config/FFT/*.yaml): phase 2's model and constant lr, but the yaml's
  # 10 epochs (that script does not shorten them to 5) and 5 warm-up epochs (Clothing1M's yaml: 1).
  c.baselines.gmm.epochs = 10
  c.baselines.gmm.warmup_epochs = 5
  return c


VARIANTS = ("deft", "vlpt", "turn")


def variant(c, method: str):
  """The paper's comparison methods as whole runs on a config (its ``method=`` argument):

  - "deft": the method (detection, then phase 2 on DEFT's clean subset);
  - "vlpt": VLPT, visual + learned text prompts trained with CE on every noisy label (the paper's Fig. 1), no
    detection; the prompts train at phase 1's lr;
  - "turn": TURN (Table 4), a linear probe on the noisy labels keeps the samples a GMM on its losses calls
    clean, then phase 2 (FFT) trains on them (deft_jax/baselines/turn.py), no DEFT detection.
  """
  if method not in VARIANTS:
    raise ConfigError(f"unknown method {method!r}; known: {VARIANTS}")
  if method == "vlpt":
    c.stages = ("adapt", "evaluate")
    c.adapt.method = "vlpt"
    c.adapt.train_on = "all"
    c.adapt.schedule.lr = c.detect.schedule.lr
  elif method == "turn":
    c.stages = ("adapt", "evaluate")
    c.adapt.train_on = "turn"
  return c


def runlocal(c):
  """A smoke run of the whole pipeline in about a minute on a CPU: a tiny random CLIP, a few hundred images.

  The dataset itself must be available (TFDS downloads it on first use, folder sources need their files).
  Detection quality is meaningless with a random model; use it to check data, config and environment.
  """
  c.model.checkpoint = ""
  c.model.preset = "tiny"
  c.data.image_size = 32
  c.data.train_size = 256  # the first 256, or all of a smaller dataset
  c.data.test_size = 128
  c.detect.epochs = 2
  c.detect.warmup_epochs = 1
  c.detect.batch_size = 32
  c.detect.peft.vpt_tokens = 4
  c.detect.n_ctx = 4
  c.adapt.epochs = 1
  c.adapt.batch_size = 32
  c.baselines.gmm.epochs = c.baselines.gmm.warmup_epochs = None
  c.log_every_steps = 2
  c.checkpoint_every_steps = 10
  return c


def from_file(path, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file (e.g. configs/demo.py), as ``--config path[:arg]`` would load it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise MissingFileError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(f"deft_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parse_args(arg: str | None, **defaults) -> dict:
  """'runlocal,noise=idn,ratio=0.3' -> {'runlocal': True, 'noise': 'idn', 'ratio': 0.3, ...defaults}.

  Values take the type of their default; a bare name sets a boolean to True; an unknown name is an error.
  """
  out = dict(defaults)
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    k, _, v = part.partition("=")
    if k not in defaults:
      raise ConfigError(f"unknown config argument {k!r}; known: {sorted(defaults)}")
    d = defaults[k]
    if not _:
      if not isinstance(d, bool):
        raise ConfigError(f"config argument {k!r} needs a value ({k}=...)")
      out[k] = True
    elif isinstance(d, bool):
      if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"config argument {k}={v!r} is not a boolean")
      out[k] = v.lower() in ("true", "1", "yes")
    elif isinstance(d, (int, float)):
      try:
        out[k] = type(d)(v)
      except ValueError:
        raise ConfigError(f"config argument {k}={v!r} is not a {type(d).__name__}") from None
    else:
      out[k] = v
  return out
