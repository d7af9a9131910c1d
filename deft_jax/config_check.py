"""Every config value whose bad range is knowable, checked once when the run reads its config: the one table.

run.run() calls :func:`check` before any stage runs and before anything is written to the workdir, so that a
bad value (``--config.detect.epochs=-1``, a batch size of 0, a misspelt enum string) is one line naming the
field, its value and the allowed range, not a traceback after the pretraining stage. :func:`markdown` renders
the table for the README's error section (regenerate it with ``python -m deft_jax.config_check``).

The enum values the stages accept are spelt here; tests/test_faults.py checks that they equal the constants of
the modules that read them. This module imports neither JAX nor TensorFlow (loading a config stays light).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Optional

from deft_jax.errors import ConfigError

# The values of the enum fields (each equals its reading module's constant; tests/test_faults.py checks it).
DTYPES = ("float32", "bfloat16")
ATTENTIONS = (None, "xla", "cudnn")
OPTIMIZERS = ("sgd", "adamw", "adam")
DECAYS = ("cosine", "constant", "linear")
FINAL_MASKS = ("online", "scoring_pass")
RANKINGS = ("margin", "label_probability", "strict_margin")
RECIPES = ("", "synthetic", "real_noise")  # "": by data.noise.type (config_lib.recipe_name)
PRED_PROBS = ("auto", "full", "topk", "none")
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
WARMUP_LOSSES = ("ce", "sce")
VPT_MODES = ("none", "shallow", "deep")
ADAPT_METHODS = ("fft", "peft", "vlpt", "none", "zeroshot")
ADAPT_TRAINED = ("fft", "peft", "vlpt")
TRAIN_ON = ("deft", "all", "clean_oracle")  # and any baseline
EPOCH_OVER = ("all", "selected")
TRAINABLE = ("blocks", "all", "peft", "head")  # or a list of (regex, value) rules
HEAD_INITS = ("random", "text")
LOSSES = ("ce", "gce", "sce", "elr")
GMM_MODELS = ("phase2", "selector")
NOISE_TYPES = ("none", "human", "sym", "pair", "asym", "idn")
CLASS_MAPS = ("next", "cifar10")  # or a dict
WEBVISION_SUBSETS = ("google", "flickr", "google+flickr")
CAPTION_KINDS = ("templates", "varied")  # pretrain/captions.py
NEGATIVES = ("uniform", "hard", "mixed")  # detect/losses.py complementary_labels
TEMPLATE_SETS = ("ensemble", "single")  # or a list of templates with "{}"

TRAINING_SECTIONS = ("pretrain", "detect", "adapt", "baselines")


@dataclasses.dataclass(frozen=True)
class Context:
  """What a check may read beside the value: the whole config and the run's process count."""

  config: Any
  process_count: int = 1

  def get(self, path: str, default=None):
    return _lookup(self.config, path, default)


@dataclasses.dataclass(frozen=True)
class Check:
  """``field`` (dotted path) must satisfy ``ok(value, ctx)``; ``allowed`` says what it may be (``{processes}``
  becomes the run's process count in an error, "the process count" in the README)."""

  field: str
  allowed: str
  ok: Callable[[Any, Context], bool]

  def passes(self, value, ctx: Context) -> bool:
    """``ok``, with a value of a type it cannot even inspect (a number for a list, ...) failing it."""
    try:
      return bool(self.ok(value, ctx))
    except (TypeError, ValueError, KeyError, AttributeError):
      return False


def _lookup(config, path: str, default=None):
  node = config
  for part in path.split("."):
    try:
      if part not in node:
        return default
      node = node[part]
    except TypeError:
      return default
  return node


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _int(lo: int, hi: Optional[str] = None):
  """An integer >= lo (and <= the field ``hi`` names, when given and itself a valid count >= 1)."""
  def ok(v, ctx):
    bound = None if hi is None else ctx.get(hi)
    return _is_int(v) and v >= lo and (not (_is_int(bound) and bound >= 1) or v <= bound)
  return ok


def _real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
  def ok(v, ctx):
    if not _is_real(v):
      return False
    v = float(v)
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  return ok


def _optional(pred):
  return lambda v, ctx: v is None or pred(v, ctx)


def _one_of(values, *, or_list=None):
  def ok(v, ctx):
    if or_list is not None and isinstance(v, (list, tuple)):
      return or_list(v)
    return isinstance(v, str) and v in values or (v is None and None in values)
  return ok


_BATCH = "a positive integer, a multiple of the process count{processes}"


def _batch(v, ctx) -> bool:
  return _is_int(v) and v > 0 and v % ctx.process_count == 0


def _bool(v, ctx) -> bool:
  return isinstance(v, bool)


def _choices(values) -> str:
  return "one of " + ", ".join(repr(v) for v in values)


def _baselines() -> list[str]:
  from deft_jax import baselines  # pylint: disable=g-import-not-at-top  (the registry's names only: no JAX)
  return baselines.available()


def _is_rules(v) -> bool:
  return isinstance(v, (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str)
                                              for r in v)


def _section_checks(s: str) -> list[Check]:
  """The optimiser, schedule and batch fields every training section has (pretrain, detect, adapt, baselines)."""
  out = [
      Check(f"{s}.batch_size", _BATCH, _batch),
      Check(f"{s}.optim.name", _choices(OPTIMIZERS), _one_of(OPTIMIZERS)),
      Check(f"{s}.optim.momentum", "a number in [0, 1)", _real(0, 1, hi_open=True)),
      Check(f"{s}.optim.weight_decay", "a number >= 0", _real(0)),
      Check(f"{s}.optim.b1", "a number in [0, 1)", _real(0, 1, hi_open=True)),
      Check(f"{s}.optim.b2", "a number in [0, 1)", _real(0, 1, hi_open=True)),
      Check(f"{s}.optim.eps", "a number > 0", _real(0, lo_open=True)),
      Check(f"{s}.optim.grad_clip_norm", "None or a number > 0", _optional(_real(0, lo_open=True))),
      Check(f"{s}.schedule.lr", "a finite number > 0", _real(0, lo_open=True)),
      Check(f"{s}.schedule.decay", _choices(DECAYS), _one_of(DECAYS)) if s != "detect" else
      Check("detect.schedule.decay", "None (detect.recipe's) or " + _choices(DECAYS), _optional(_one_of(DECAYS))),
      Check(f"{s}.schedule.warmup_steps", "an integer >= 0", _int(0)),
      Check(f"{s}.schedule.min_lr", "a finite number >= 0", _real(0)),
      Check(f"{s}.schedule.per_epoch", "True or False", _bool),
  ]
  if s != "pretrain":
    out.append(Check(f"{s}.eval_batch_size", _BATCH, _batch))
  return out


def _peft_checks(s: str) -> list[Check]:
  from deft_jax.models import peft as peft_lib  # pylint: disable=g-import-not-at-top  (no JAX)
  return [
      Check(f"{s}.peft.vpt", _choices(VPT_MODES), _one_of(VPT_MODES)),
      Check(f"{s}.peft.vpt_tokens", f"an integer >= 0, >= 1 unless {s}.peft.vpt='none'",
            lambda v, ctx: _is_int(v) and (v >= 1 or v == 0 and ctx.get(f"{s}.peft.vpt") == "none")),
      Check(f"{s}.peft.lora_rank", "an integer >= 0", _int(0)),
      Check(f"{s}.peft.lora_alpha", "None or a number > 0", _optional(_real(0, lo_open=True))),
      Check(f"{s}.peft.lora_targets", f"a list of {', '.join(peft_lib.LORA_TARGETS)}",
            lambda v, ctx: isinstance(v, (list, tuple)) and set(v) <= set(peft_lib.LORA_TARGETS)),
      Check(f"{s}.peft.adapter_dim", "an integer >= 0", _int(0)),
      Check(f"{s}.peft.partial", "None or an integer >= 1", _optional(_int(1))),
  ]


def _data_checks() -> list[Check]:
  from deft_jax.data import config as data_config  # pylint: disable=g-import-not-at-top  (no TensorFlow)
  augs = data_config.AUGMENTATIONS
  return [
      Check("data.image_size", "an integer >= 0 (0: the model's)", _int(0)),
      Check("data.train_size", "an integer >= 0 (0: all)", _int(0)),
      Check("data.test_size", "an integer >= 0 (0: all)", _int(0)),
      Check("data.num_classes", "an integer >= 0 (0: the source's)", _int(0)),
      Check("data.balanced_subset", "an integer >= 0 (0: none)", _int(0)),
      Check("data.shuffle_buffer", "an integer >= 1", _int(1)),
      Check("data.train_augment", _choices(augs), _one_of(augs)),
      Check("data.eval_resize", _choices(data_config.EVAL_RESIZES), _one_of(data_config.EVAL_RESIZES)),
      Check("data.normalization", f"{_choices(sorted(data_config.DATASET_STATS))} or ((m, m, m), (s, s, s))",
            lambda v, ctx: (v in data_config.DATASET_STATS) if isinstance(v, str) else
            (isinstance(v, (list, tuple)) and len(v) == 2 and all(len(x) == 3 for x in v))),
      Check("data.webvision_subset", _choices(WEBVISION_SUBSETS), _one_of(WEBVISION_SUBSETS)),
      Check("data.noise.type", _choices(NOISE_TYPES), _one_of(NOISE_TYPES)),
      Check("data.noise.ratio", "a number in [0, 1]", _real(0, 1)),
      Check("data.noise.class_map", f"{_choices(CLASS_MAPS)} or a dict",
            lambda v, ctx: v in CLASS_MAPS or hasattr(v, "items")),
      Check("data.noise.idn_image_size", "an integer >= 0 (0: by source)", _int(0)),
  ]


def _stage_checks() -> list[Check]:
  from deft_jax import stages  # pylint: disable=g-import-not-at-top  (no JAX)
  from deft_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  from deft_jax.models import presets  # pylint: disable=g-import-not-at-top  (no JAX)
  augs = data_config.AUGMENTATIONS
  trains = lambda ctx: ctx.get("adapt.method") in ADAPT_TRAINED  # noqa: E731
  return [
      Check("seed", "an integer >= 0", _int(0)),
      Check("stages", f"a list of {', '.join(stages.STAGE_ORDER)}",
            lambda v, ctx: isinstance(v, (list, tuple)) and set(v) <= set(stages.STAGE_ORDER)),
      Check("log_every_steps", "an integer >= 1", _int(1)),
      Check("checkpoint_every_steps", "an integer >= 1", _int(1)),
      Check("report.num_suspects", "an integer >= 0", _int(0)),
      Check("report.review_top_k", "an integer >= 1 (report.review=False: no page)", _int(1)),
      Check("report.pred_probs", _choices(PRED_PROBS), _one_of(PRED_PROBS)),
      Check("report.pred_probs_topk", "an integer >= 1", _int(1)),
      Check("report.pred_probs_full_max_gb", "a number >= 0", _real(0)),
      Check("model.preset", _choices(sorted(presets.PRESETS)), _one_of(tuple(presets.PRESETS))),
      Check("model.dtype", _choices(DTYPES), _one_of(DTYPES)),
      Check("model.attention", _choices(ATTENTIONS), _one_of(ATTENTIONS)),
      Check("pretrain.preset", _choices(sorted(presets.PRESETS)), _one_of(tuple(presets.PRESETS))),
      Check("pretrain.epochs", "an integer >= 1", _int(1)),
      Check("pretrain.augment", _choices(augs), _one_of(augs)),
      Check("pretrain.eval_every_epochs", "an integer >= 0 (0: at the end only)", _int(0)),
      Check("pretrain.snapshot_epochs", "a list of integers in [1, pretrain.epochs]",
            lambda v, ctx: isinstance(v, (list, tuple)) and all(_int(1, "pretrain.epochs")(e, ctx) for e in v)),
      Check("detect.epochs", "an integer >= 1", _int(1)),
      Check("detect.recipe", _choices(RECIPES), _one_of(RECIPES)),
      Check("detect.warmup_epochs", "None (detect.recipe's) or an integer in [0, detect.epochs]",
            _optional(_int(0, "detect.epochs"))),
      Check("detect.strict_selection", "None (detect.recipe's), True or False", _optional(_bool)),
      Check("detect.n_ctx", "an integer >= 1", _int(1)),
      Check("detect.ctx_init_pad", "True or False", _bool),
      Check("detect.class_token_position", _choices(CLASS_TOKEN_POSITIONS), _one_of(CLASS_TOKEN_POSITIONS)),
      Check("detect.warmup_loss", "None (detect.recipe's) or " + _choices(WARMUP_LOSSES),
            _optional(_one_of(WARMUP_LOSSES))),
      Check("detect.pseudo_labels_from_epoch", "None (detect.recipe's) or an integer >= 1 (epochs count from 1)",
            _optional(_int(1))),
      Check("detect.final_mask", _choices(FINAL_MASKS), _one_of(FINAL_MASKS)),
      Check("detect.ranking", _choices(RANKINGS) + " (all but 'margin' need detect.scoring_pass=True or "
            "detect.final_mask='scoring_pass')",
            lambda v, ctx: v == "margin" or v in RANKINGS and (
                ctx.get("detect.scoring_pass") is True or ctx.get("detect.final_mask") == "scoring_pass")),
      Check("detect.text_chunk", "an integer >= 0 (0: all prompts at once)", _int(0)),
      Check("detect.trainable", "None or a list of (regex, value) rules", _optional(lambda v, ctx: _is_rules(v))),
      Check("adapt.method", _choices(ADAPT_METHODS), _one_of(ADAPT_METHODS)),
      Check("adapt.train_on", f"{_choices(TRAIN_ON)} or a baseline of deft_jax/baselines/",
            lambda v, ctx: isinstance(v, str) and (v in TRAIN_ON or v in _baselines())),
      Check("adapt.epochs", "an integer >= 0; >= 1 when adapt.steps=0 and adapt.method trains (fft, peft, vlpt)",
            lambda v, ctx: _is_int(v) and v >= 0 and (v >= 1 or ctx.get("adapt.steps") != 0 or not trains(ctx))),
      Check("adapt.steps", "an integer >= 0 (0: train adapt.epochs epochs)", _int(0)),
      Check("adapt.epoch_over", _choices(EPOCH_OVER), _one_of(EPOCH_OVER)),
      Check("adapt.eval_every_epochs", "an integer >= 0 (0: at the end only)", _int(0)),
      Check("adapt.augment", "'' (data.train_augment) or " + _choices(augs), _one_of(("",) + tuple(augs))),
      Check("adapt.trainable", f"{_choices(TRAINABLE)} or a list of (regex, value) rules",
            _one_of(TRAINABLE, or_list=_is_rules)),
      Check("adapt.rules", "None or a list of (regex, value) rules", _optional(lambda v, ctx: _is_rules(v))),
      Check("adapt.head_init", _choices(HEAD_INITS), _one_of(HEAD_INITS)),
      Check("adapt.loss", _choices(LOSSES), _one_of(LOSSES)),
      Check("adapt.loss_params.gce_q", "a number in (0, 1]", _real(0, 1, lo_open=True)),
      Check("adapt.loss_params.sce_alpha", "a number >= 0", _real(0)),
      Check("adapt.loss_params.sce_beta", "a number >= 0", _real(0)),
      Check("adapt.loss_params.elr_lambda", "a number >= 0", _real(0)),
      Check("adapt.loss_params.elr_beta", "a number in [0, 1)", _real(0, 1, hi_open=True)),
      Check("adapt.zeroshot_templates", f"{_choices(TEMPLATE_SETS)} or a list of templates with '{{}}'",
            _one_of(TEMPLATE_SETS, or_list=lambda v: bool(v) and all(isinstance(t, str) and "{}" in t
                                                                     for t in v))),
      Check("baselines.methods", "a list of baselines of deft_jax/baselines/",
            lambda v, ctx: isinstance(v, (list, tuple)) and set(v) <= set(_baselines())),
      Check("baselines.epochs", "an integer >= 1", _int(1)),
      Check("baselines.warmup_epochs", "an integer in [0, baselines.epochs]", _int(0, "baselines.epochs")),
      Check("baselines.small_loss.rate", "None or a number in [0, 1)", _optional(_real(0, 1, hi_open=True))),
      Check("baselines.gmm.model", _choices(GMM_MODELS), _one_of(GMM_MODELS)),
      Check("baselines.gmm.epochs", "None (the model's recipe's) or an integer >= 1", _optional(_int(1))),
      Check("baselines.gmm.warmup_epochs", "None (baselines.warmup_epochs) or an integer >= 0", _optional(_int(0))),
      Check("baselines.cleanlab.folds", "an integer >= 2", _int(2)),
      Check("baselines.cleanlab.C", "a number > 0", _real(0, lo_open=True)),
      Check("baselines.cleanlab.knn", "an integer >= 1", _int(1)),
  ]


def _option_checks() -> list[Check]:
  """The stand-in's pretraining options and phase 1's options beyond the method."""
  return [
      Check("pretrain.logit_scale", "a number >= 0 (0: learned, clamped at 100)", _real(0)),
      Check("pretrain.captions.kind", _choices(CAPTION_KINDS), _one_of(CAPTION_KINDS)),
      Check("detect.negatives", _choices(NEGATIVES), _one_of(NEGATIVES)),
      Check("detect.class_specific_negatives", "True or False", _bool),
      Check("detect.logit_scale", "a number >= 0 (0: the CLIP's own)", _real(0)),
  ]


def checks() -> list[Check]:
  """The table: every check, in the order they run and the README lists them."""
  out = _stage_checks() + _option_checks() + _data_checks()
  for s in TRAINING_SECTIONS:
    out += _section_checks(s)
  for s in ("detect", "adapt", "baselines"):
    out += _peft_checks(s)
  return out


def _format(value) -> str:
  if isinstance(value, str):
    return repr(value)
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return str(value)


def failures(config, *, process_count: int = 1) -> list[str]:
  """One message per failed check: ``config.<field>=<value>: must be <allowed>``. A field the config does not
  have is not checked (a config built for a library call may lack whole sections)."""
  ctx = Context(config, process_count)
  missing = object()
  out = []
  for c in checks():
    value = ctx.get(c.field, missing)
    if value is missing:
      continue
    if not c.passes(value, ctx):
      allowed = c.allowed.replace("{processes}", f" ({process_count})")
      out.append(f"config.{c.field}={_format(value)}: must be {allowed}")
  return out


def check(config, *, process_count: int = 1) -> None:
  """Raises ConfigError (one line naming every bad field, its value and the allowed range) when a check fails."""
  bad = failures(config, process_count=process_count)
  if bad:
    raise ConfigError("; ".join(bad))


README_BEGIN = "<!-- config checks: begin (generated by `python -m deft_jax.config_check`; do not edit) -->"
README_END = "<!-- config checks: end -->"


def markdown() -> str:
  """The table for the README's error section, between its markers."""
  rows = ["| field | allowed |", "|---|---|"]
  for c in checks():
    allowed = c.allowed.replace("{processes}", "").replace("|", "\\|")
    rows.append(f"| `{c.field}` | {allowed} |")
  return "\n".join([README_BEGIN, *rows, README_END])


def update_readme(path) -> bool:
  """Replaces the block between the markers in ``path`` with :func:`markdown`; returns whether it changed."""
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  text = path.read_text()
  start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
  new = text[:start] + markdown() + text[end:]
  if new != text:
    path.write_text(new)
  return new != text


if __name__ == "__main__":
  import pathlib  # pylint: disable=g-import-not-at-top
  readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
  print(f"{readme}: {'updated' if update_readme(readme) else 'already up to date'}")
