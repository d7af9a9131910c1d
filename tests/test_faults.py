"""Faults a user meets, through `python -m deft_jax.main` (issue 27, part A): a bad config value is refused when
the config is read, before any stage; a hub checkpoint without network; a corrupt image; a full disk while a
checkpoint or the report is written. Each stops with exit status 2 and exactly one `deft_jax: error:` line, no
traceback, and every file that was in the workdir before is byte-identical (sha256).

The full-disk tests put the workdir on a small tmpfs (mounted here as root; skipped where mounting is not
allowed) and shrink it, once a first run has finished, to what the rerun needs before the write under test.
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SHRUNK_DEMO, SHRUNK_OVERRIDES, main_command, main_env, run_main

from deft_jax import config_check, config_lib

CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.py"))
PREFIX = "deft_jax: error: "


def _hashes(workdir: Path) -> dict:
  """{relative path: sha256} of every file under ``workdir``."""
  if not workdir.exists():
    return {}
  return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def _one_error(proc) -> str:
  """The one `deft_jax: error:` line of a run that stopped for the user's reason (exit 2, no traceback)."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith(PREFIX)]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return errors[0][len(PREFIX):]


def _unchanged(before: dict, workdir: Path, *, new_ok=("tensorboard/",)) -> None:
  """Every file of ``before`` is still there, byte for byte; new files only where ``new_ok`` allows."""
  after = _hashes(workdir)
  assert {k: after.get(k) for k in before} == before
  new = set(after) - set(before)
  assert all(k.startswith(new_ok) for k in new), sorted(new)


# ---- config checks: the table ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arg", [None, "runlocal"])
@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_passes_the_checks(path, arg):
  config = config_lib.from_file(REPO / path, arg)
  assert config_check.failures(config, process_count=1) == []


# Candidates of which every check must refuse at least one (wrong sign, out of [0, 1], not finite, an unknown
# string, a wrong type): each check of the table can fail.
_BAD = (-1, 0, -0.5, 1.5, 2, math.nan, math.inf, "no_such_value", None, True, ("no_such_value",), ((1,),), 3)


def test_every_check_accepts_the_default_and_refuses_a_bad_value():
  base = config_lib.base_config()
  config = base.to_dict()
  for check in config_check.checks():
    ctx = config_check.Context(base, process_count=2)
    default = ctx.get(check.field, "<absent>")
    if default != "<absent>":
      assert check.passes(default, ctx), (check.field, default)
    refused = [v for v in _BAD if not check.passes(v, ctx)]
    assert refused, check.field
    # The message names the field, the value and the allowed range.
    parent, _, leaf = check.field.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
      node = node[part]
    saved, node[leaf] = node.get(leaf, "<absent>"), refused[0]
    try:
      bad = [m for m in config_check.failures(config, process_count=2) if m.startswith(f"config.{check.field}=")]
    finally:
      node[leaf] = saved
    assert len(bad) == 1 and str(refused[0]) in bad[0] and "must be" in bad[0], (check.field, bad)


@pytest.mark.parametrize("field, value, expected", [
    ("detect.epochs", -1, "config.detect.epochs=-1: must be an integer >= 1"),
    ("detect.batch_size", 0, "config.detect.batch_size=0: must be a positive integer, a multiple of the process "
                             "count (2)"),
    ("adapt.batch_size", 33, "config.adapt.batch_size=33: must be a positive integer, a multiple of the process "
                             "count (2)"),
    ("detect.warmup_epochs", 11,
     "config.detect.warmup_epochs=11: must be None (detect.recipe's) or an integer in [0, detect.epochs]"),
    ("detect.schedule.lr", 0.0, "config.detect.schedule.lr=0.0: must be a finite number > 0"),
    ("adapt.schedule.lr", math.nan, "config.adapt.schedule.lr=nan: must be a finite number > 0"),
    ("data.noise.ratio", 1.5, "config.data.noise.ratio=1.5: must be a number in [0, 1]"),
    ("detect.final_mask", "last", "config.detect.final_mask='last': must be one of 'online', 'scoring_pass'"),
    ("adapt.train_on", "gmmm", "config.adapt.train_on='gmmm': must be one of 'deft', 'all', 'clean_oracle' or a "
                               "baseline"),
    ("baselines.methods", ("label_match", "smal_loss"), "config.baselines.methods=('label_match', 'smal_loss'): "
                                                        "must be a list of baselines"),
    ("detect.peft.vpt_tokens", -2, "config.detect.peft.vpt_tokens=-2: must be an integer >= 0, >= 1 unless"),
    ("detect.n_ctx", 0, "config.detect.n_ctx=0: must be an integer >= 1"),
    ("model.dtype", "fp16", "config.model.dtype='fp16': must be one of 'float32', 'bfloat16'"),
])
def test_a_bad_value_is_one_message_naming_field_value_and_range(field, value, expected):
  config = config_lib.base_config()
  section, _, leaf = field.rpartition(".")
  node = config.to_dict()
  target = node
  for part in section.split("."):
    target = target[part]
  target[leaf] = value
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check(node, process_count=2)
  assert str(e.value).startswith(expected), str(e.value)
  assert "\n" not in str(e.value)


def test_the_enum_values_are_those_the_stages_accept():
  from deft_jax import optim
  from deft_jax import adapt, run
  from deft_jax.adapt import train as adapt_train
  from deft_jax.baselines import gmm
  from deft_jax.classify import classifier as clf_lib
  from deft_jax.classify import losses
  from deft_jax.data import noise
  from deft_jax.detect import train as detect_train
  assert config_check.ADAPT_METHODS == tuple(adapt.METHODS)
  assert config_check.ADAPT_TRAINED == tuple(k for k, m in adapt.METHODS.items() if m.trains)
  assert config_check.TRAIN_ON == run.TRAIN_ON
  assert config_check.EPOCH_OVER == adapt_train.EPOCH_OVER
  assert config_check.LOSSES == losses.LOSSES
  assert config_check.GMM_MODELS == gmm.MODELS
  assert config_check.NOISE_TYPES == noise.NOISE_TYPES
  assert config_check.RANKINGS == detect_train.RANKINGS
  assert config_check.PRED_PROBS == detect_train.PRED_PROBS
  # Spelt in their modules' error paths only: each module takes every value of the table and refuses another.
  from deft_jax.models.peft import PEFTConfig
  for name in config_check.TRAINABLE:
    assert clf_lib.clip_rules(name, PEFTConfig())
  with pytest.raises(config_check.ConfigError):
    clf_lib.clip_rules("heads", PEFTConfig())
  for decay in config_check.DECAYS:
    optim.make_schedule({"lr": 0.1, "decay": decay}, total_steps=10)
  with pytest.raises(config_check.ConfigError):
    optim.make_schedule({"lr": 0.1, "decay": "step"}, total_steps=10)
  from deft_jax.models import prompts as prompts_lib
  from deft_jax.models.tokenizer import Tokenizer
  for position in config_check.CLASS_TOKEN_POSITIONS:
    prompts_lib.build_template(["cat", "dog"], Tokenizer(), n_ctx=2, position=position)
  with pytest.raises(config_check.ConfigError):
    prompts_lib.build_template(["cat", "dog"], Tokenizer(), n_ctx=2, position="back")


def test_the_readme_lists_the_checks_of_the_table():
  text = (REPO / "README.md").read_text()
  begin, end = text.index(config_check.README_BEGIN), text.index(config_check.README_END)
  block = text[begin:end + len(config_check.README_END)]
  assert block == config_check.markdown(), "regenerate it: python -m deft_jax.config_check"


# ---- config checks: through the CLI ----------------------------------------------------------------------------

@pytest.mark.parametrize("override, named, existing", [
    ("--config.detect.epochs=-1", "config.detect.epochs=-1: must be an integer >= 1", True),
    ("--config.detect.batch_size=0", "config.detect.batch_size=0: must be a positive integer, a multiple of the "
                                     "process count (1)", False),
])
def test_a_bad_value_stops_the_run_before_any_stage_and_touches_nothing(tmp_path, override, named, existing):
  workdir = tmp_path / "w"
  if existing:
    workdir.mkdir()
    (workdir / "notes.txt").write_text("an earlier file\n")
  before = _hashes(workdir)
  proc = run_main(workdir, *SHRUNK_OVERRIDES, override, config=SHRUNK_DEMO, check=False, timeout=300)
  assert _one_error(proc).startswith(named)
  assert "[pretrain]" not in proc.stderr  # refused before the first stage
  if existing:
    _unchanged(before, workdir, new_ok=())
  else:
    assert not workdir.exists()  # not even created


# ---- data and model sources ------------------------------------------------------------------------------------

def _folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
  from data_trees import real_jpegs
  jpegs, _ = real_jpegs(classes * per_class)
  for i, data in enumerate(jpegs):
    d = root / f"class_{i % classes}"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{i}.jpg").write_bytes(data)
  return root


def test_a_hub_checkpoint_neither_cached_nor_reachable_is_one_line_with_the_two_ways_out(tmp_path):
  root = _folder(tmp_path / "images")
  env = main_env()
  hf = tmp_path / "hf_home"
  env.update(HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), HF_HUB_OFFLINE="1")
  workdir = tmp_path / "w"
  cmd = main_command(workdir, "--config.baselines.methods=()", config=f"configs/image_folder.py:root={root}")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  message = _one_error(proc)
  assert "'openai/clip-vit-base-patch16'" in message and "neither in the Hugging Face cache" in message
  assert "nor reachable" in message and str(hf / "hub") in message
  assert "model.checkpoint to a local directory" in message
  assert "model.checkpoint=pretrain" in message and "data.pretrain_root" in message


def test_a_truncated_jpeg_is_named_with_its_index_and_the_decoder_words_only(tmp_path):
  root = _folder(tmp_path / "images")
  bad = sorted((root / "class_1").glob("*.jpg"))[1]
  data = bad.read_bytes()
  bad.write_bytes(data[:len(data) // 2])
  proc = run_main(tmp_path / "w", "--config.stages=('pretrain','detect')", "--config.model.checkpoint=pretrain",
                  "--config.pretrain.split=train", "--config.pretrain.epochs=1", "--config.pretrain.batch_size=12",
                  "--config.detect.batch_size=12", "--config.baselines.methods=()",
                  config=f"configs/image_folder.py:root={root},runlocal", check=False, timeout=300)
  message = _one_error(proc)
  index = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")).index(bad.relative_to(root).as_posix())
  assert f"cannot read or decode image {bad} (index {index}): " in message, message
  assert "Invalid JPEG data" in message  # the decoder's own words
  assert "function_node" not in message and "[Op:" not in message and "/job:localhost" not in message, message


# ---- a full disk -----------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
  """A 64 MiB tmpfs (root only); ``shrink(free)`` leaves ``free`` bytes beyond what it holds."""
  mnt = tmp_path / "disk"
  mnt.mkdir()
  if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
    pytest.skip("a small tmpfs needs root")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")

  def shrink(free: int):
    size = shutil.disk_usage(mnt).used + free
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)
    return shutil.disk_usage(mnt).free

  def grow():
    subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)

  shrink.grow = grow
  yield mnt, shrink
  subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_at_a_checkpoint_then_at_the_report_is_one_line_and_keeps_every_earlier_file(small_disk):
  mnt, shrink = small_disk
  workdir = mnt / "w"
  stages = "--config.stages=('pretrain','detect')"
  run_main(workdir, *SHRUNK_OVERRIDES, "--config.stages=('pretrain',)", config=SHRUNK_DEMO, timeout=600)
  before = _hashes(workdir)
  assert any(k.startswith("pretrain/checkpoints/") for k in before) and "pretrain/clip/model.safetensors" in before
  # 1. The detector's first checkpoint (MiBs) does not fit.
  shrink(256 * 1024)
  proc = run_main(workdir, *SHRUNK_OVERRIDES, stages, config=SHRUNK_DEMO, check=False, timeout=600)
  message = _one_error(proc)
  assert "no space left on device" in message and str(workdir / "detect" / "checkpoints") in message, message
  # config.json records the new command's stages (a field that may change between a run and its resumption).
  assert "detect" in json.loads((workdir / "config.json").read_text())["stages"]
  _unchanged({k: v for k, v in before.items() if k != "config.json"}, workdir, new_ok=("tensorboard/", "config.json"))
  # Space again: the same command finishes.
  shrink.grow()
  run_main(workdir, *SHRUNK_OVERRIDES, stages, config=SHRUNK_DEMO, timeout=600)
  # 2. The rerun's config.json and TensorBoard events fit; the new report (its arrays, plots) does not.
  before = _hashes(workdir)
  assert "report/label_issues.csv" in before and "report/summary.json" in before
  shrink(32 * 1024)
  proc = run_main(workdir, *SHRUNK_OVERRIDES, stages, config=SHRUNK_DEMO, check=False, timeout=600)
  message = _one_error(proc)
  assert "no space left on device" in message and str(workdir / "report") in message, message
  _unchanged(before, workdir)
  assert not [p for p in workdir.iterdir() if p.name.startswith(".report.")]  # no staging or backup left
