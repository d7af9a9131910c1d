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


# The plain checks, whose allowed range is said from the same bounds the check tests.
def _int_check(field: str, lo: int, note: str = "") -> Check:
  """An integer >= ``lo``; ``note`` says what a special value means (e.g. "0: all")."""
  return Check(field, f"an integer >= {lo}" + (f" ({note})" if note else ""), _int(lo))


def _real_check(field: str, lo: float, hi: float = math.inf, *, lo_open: bool = False,
                hi_open: bool = False) -> Check:
  if hi == math.inf:
    allowed = f"a number {'>' if lo_open else '>='} {lo}"
  else:
    allowed = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  return Check(field, allowed, _real(lo, hi, lo_open=lo_open, hi_open=hi_open))


def _enum_check(field: str, values) -> Check:
  return Check(field, _choices(values), _one_of(values))


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
      _enum_check(f"{s}.optim.name", OPTIMIZERS),
      _real_check(f"{s}.optim.momentum", 0, 1, hi_open=True),
      _real_check(f"{s}.optim.weight_decay", 0),
      _real_check(f"{s}.optim.b1", 0, 1, hi_open=True),
      _real_check(f"{s}.optim.b2", 0, 1, hi_open=True),
      _real_check(f"{s}.optim.eps", 0, lo_open=True),
      Check(f"{s}.optim.grad_clip_norm", "None or a number > 0", _optional(_real(0, lo_open=True))),
      Check(f"{s}.schedule.lr", "a finite number > 0", _real(0, lo_open=True)),
      _enum_check(f"{s}.schedule.decay", DECAYS) if s != "detect" else
      Check("detect.schedule.decay", "None (detect.recipe's) or " + _choices(DECAYS), _optional(_one_of(DECAYS))),
      _int_check(f"{s}.schedule.warmup_steps", 0),
      Check(f"{s}.schedule.min_lr", "a finite number >= 0", _real(0)),
      Check(f"{s}.schedule.per_epoch", "True or False", _bool),
  ]
  if s != "pretrain":
    out.append(Check(f"{s}.eval_batch_size", _BATCH, _batch))
  return out


def _peft_checks(s: str) -> list[Check]:
  from deft_jax.models import peft as peft_lib  # pylint: disable=g-import-not-at-top  (no JAX)
  return [
      _enum_check(f"{s}.peft.vpt", VPT_MODES),
      Check(f"{s}.peft.vpt_tokens", f"an integer >= 0, >= 1 unless {s}.peft.vpt='none'",
            lambda v, ctx: _is_int(v) and (v >= 1 or v == 0 and ctx.get(f"{s}.peft.vpt") == "none")),
      _int_check(f"{s}.peft.lora_rank", 0),
      Check(f"{s}.peft.lora_alpha", "None or a number > 0", _optional(_real(0, lo_open=True))),
      Check(f"{s}.peft.lora_targets", f"a list of {', '.join(peft_lib.LORA_TARGETS)}",
            lambda v, ctx: isinstance(v, (list, tuple)) and set(v) <= set(peft_lib.LORA_TARGETS)),
      _int_check(f"{s}.peft.adapter_dim", 0),
      Check(f"{s}.peft.partial", "None or an integer >= 1", _optional(_int(1))),
  ]


def _data_checks() -> list[Check]:
  from deft_jax.data import config as data_config  # pylint: disable=g-import-not-at-top  (no TensorFlow)
  augs = data_config.AUGMENTATIONS
  return [
      _int_check("data.image_size", 0, "0: the model's"),
      _int_check("data.train_size", 0, "0: all"),
      _int_check("data.test_size", 0, "0: all"),
      _int_check("data.num_classes", 0, "0: the source's"),
      _int_check("data.balanced_subset", 0, "0: none"),
      _int_check("data.shuffle_buffer", 1),
      _enum_check("data.train_augment", augs),
      _enum_check("data.eval_resize", data_config.EVAL_RESIZES),
      Check("data.normalization", f"{_choices(sorted(data_config.DATASET_STATS))} or ((m, m, m), (s, s, s))",
            lambda v, ctx: (v in data_config.DATASET_STATS) if isinstance(v, str) else
            (isinstance(v, (list, tuple)) and len(v) == 2 and all(len(x) == 3 for x in v))),
      _enum_check("data.webvision_subset", WEBVISION_SUBSETS),
      _enum_check("data.noise.type", NOISE_TYPES),
      _real_check("data.noise.ratio", 0, 1),
      Check("data.noise.class_map", f"{_choices(CLASS_MAPS)} or a dict",
            lambda v, ctx: v in CLASS_MAPS or hasattr(v, "items")),
      _int_check("data.noise.idn_image_size", 0, "0: by source"),
  ]


def _stage_checks() -> list[Check]:
  from deft_jax import stages  # pylint: disable=g-import-not-at-top  (no JAX)
  from deft_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  from deft_jax.models import presets  # pylint: disable=g-import-not-at-top  (no JAX)
  augs = data_config.AUGMENTATIONS
  trains = lambda ctx: ctx.get("adapt.method") in ADAPT_TRAINED  # noqa: E731
  return [
      _int_check("seed", 0),
      Check("stages", f"a list of {', '.join(stages.STAGE_ORDER)}",
            lambda v, ctx: isinstance(v, (list, tuple)) and set(v) <= set(stages.STAGE_ORDER)),
      _int_check("log_every_steps", 1),
      _int_check("checkpoint_every_steps", 1),
      _int_check("report.num_suspects", 0),
      _int_check("report.review_top_k", 1, "report.review=False: no page"),
      _enum_check("report.pred_probs", PRED_PROBS),
      _int_check("report.pred_probs_topk", 1),
      _real_check("report.pred_probs_full_max_gb", 0),
      _enum_check("model.preset", sorted(presets.PRESETS)),
      _enum_check("model.dtype", DTYPES),
      _enum_check("model.attention", ATTENTIONS),
      _enum_check("pretrain.preset", sorted(presets.PRESETS)),
      _int_check("pretrain.epochs", 1),
      _enum_check("pretrain.augment", augs),
      _int_check("pretrain.eval_every_epochs", 0, "0: at the end only"),
      Check("pretrain.snapshot_epochs", "a list of integers in [1, pretrain.epochs]",
            lambda v, ctx: isinstance(v, (list, tuple)) and all(_int(1, "pretrain.epochs")(e, ctx) for e in v)),
      _int_check("detect.epochs", 1),
      _enum_check("detect.recipe", RECIPES),
      Check("detect.warmup_epochs", "None (detect.recipe's) or an integer in [0, detect.epochs]",
            _optional(_int(0, "detect.epochs"))),
      Check("detect.strict_selection", "None (detect.recipe's), True or False", _optional(_bool)),
      _int_check("detect.n_ctx", 1),
      Check("detect.ctx_init_pad", "True or False", _bool),
      _enum_check("detect.class_token_position", CLASS_TOKEN_POSITIONS),
      Check("detect.warmup_loss", "None (detect.recipe's) or " + _choices(WARMUP_LOSSES),
            _optional(_one_of(WARMUP_LOSSES))),
      Check("detect.pseudo_labels_from_epoch", "None (detect.recipe's) or an integer >= 1 (epochs count from 1)",
            _optional(_int(1))),
      _enum_check("detect.final_mask", FINAL_MASKS),
      Check("detect.ranking", _choices(RANKINGS) + " (all but 'margin' need detect.scoring_pass=True or "
            "detect.final_mask='scoring_pass'; a run without a scoring pass sets detect.ranking='margin')",
            lambda v, ctx: v == "margin" or v in RANKINGS and (
                ctx.get("detect.scoring_pass") is True or ctx.get("detect.final_mask") == "scoring_pass")),
      _int_check("detect.text_chunk", 0, "0: all prompts at once"),
      Check("detect.trainable", "None or a list of (regex, value) rules", _optional(lambda v, ctx: _is_rules(v))),
      _enum_check("adapt.method", ADAPT_METHODS),
      Check("adapt.train_on", f"{_choices(TRAIN_ON)} or a baseline of deft_jax/baselines/",
            lambda v, ctx: isinstance(v, str) and (v in TRAIN_ON or v in _baselines())),
      Check("adapt.epochs", "an integer >= 0; >= 1 when adapt.steps=0 and adapt.method trains (fft, peft, vlpt)",
            lambda v, ctx: _is_int(v) and v >= 0 and (v >= 1 or ctx.get("adapt.steps") != 0 or not trains(ctx))),
      _int_check("adapt.steps", 0, "0: train adapt.epochs epochs"),
      _enum_check("adapt.epoch_over", EPOCH_OVER),
      _int_check("adapt.eval_every_epochs", 0, "0: at the end only"),
      Check("adapt.augment", "'' (data.train_augment) or " + _choices(augs), _one_of(("",) + tuple(augs))),
      Check("adapt.trainable", f"{_choices(TRAINABLE)} or a list of (regex, value) rules",
            _one_of(TRAINABLE, or_list=_is_rules)),
      Check("adapt.rules", "None or a list of (regex, value) rules", _optional(lambda v, ctx: _is_rules(v))),
      _enum_check("adapt.head_init", HEAD_INITS),
      _enum_check("adapt.loss", LOSSES),
      _real_check("adapt.loss_params.gce_q", 0, 1, lo_open=True),
      _real_check("adapt.loss_params.sce_alpha", 0),
      _real_check("adapt.loss_params.sce_beta", 0),
      _real_check("adapt.loss_params.elr_lambda", 0),
      _real_check("adapt.loss_params.elr_beta", 0, 1, hi_open=True),
      Check("adapt.zeroshot_templates", f"{_choices(TEMPLATE_SETS)} or a list of templates with '{{}}'",
            _one_of(TEMPLATE_SETS, or_list=lambda v: bool(v) and all(isinstance(t, str) and "{}" in t
                                                                     for t in v))),
      Check("baselines.methods", "a list of baselines of deft_jax/baselines/",
            lambda v, ctx: isinstance(v, (list, tuple)) and set(v) <= set(_baselines())),
      _int_check("baselines.epochs", 1),
      Check("baselines.warmup_epochs", "an integer in [0, baselines.epochs]", _int(0, "baselines.epochs")),
      Check("baselines.small_loss.rate", "None or a number in [0, 1)", _optional(_real(0, 1, hi_open=True))),
      _enum_check("baselines.gmm.model", GMM_MODELS),
      Check("baselines.gmm.epochs", "None (the model's recipe's) or an integer >= 1", _optional(_int(1))),
      Check("baselines.gmm.warmup_epochs", "None (baselines.warmup_epochs) or an integer >= 0", _optional(_int(0))),
      _int_check("baselines.cleanlab.folds", 2),
      _real_check("baselines.cleanlab.C", 0, lo_open=True),
      _int_check("baselines.cleanlab.knn", 1),
  ]


def _option_checks() -> list[Check]:
  """The stand-in's pretraining options and phase 1's options beyond the method."""
  return [
      Check("pretrain.logit_scale", "a number >= 0 (0: learned, clamped at 100)", _real(0)),
      _enum_check("pretrain.captions.kind", CAPTION_KINDS),
      _enum_check("detect.negatives", NEGATIVES),
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
