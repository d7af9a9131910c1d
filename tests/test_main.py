"""End to end through `python -m deft_jax.main`: the README's runlocal demo once, then the plumbing (reuse, resume
after SIGKILL in pretraining and in detection, workdir refusal, corrupt checkpoint, divergence, bad input) on the
shrunk demo of tests/conftest.py, whose runs take seconds."""

import hashlib
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SHRUNK_DEMO, SHRUNK_OVERRIDES, main_command, main_env, run_main, save_tiny_clip

DEMO = "configs/demo.py:runlocal"
# The shrunk demo with 6 detection epochs (48 steps, a checkpoint every 4), so that a run can be killed between
# two checkpoints of detection with time to spare.
SHRUNK = (*SHRUNK_OVERRIDES, "--config.detect.epochs=6")


def _main(workdir, *extra, config=SHRUNK_DEMO, timeout=900, check=True):
  return run_main(workdir, *extra, config=config, timeout=timeout, check=check)


def _one_error(proc) -> str:
  """The single `deft_jax: error:` line of a run that the user's input stopped (exit 2, no traceback)."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("deft_jax: error: ")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return errors[0]


def _digests(root: Path, skip=("tensorboard",)) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in skip}


def _kill_after_first_checkpoint(workdir: Path, stage: str, *overrides) -> int:
  """Starts a run, SIGKILLs it as soon as ``stage`` has saved a checkpoint, and returns the latest step saved
  when it died."""
  proc = subprocess.Popen(main_command(workdir, *overrides, config=SHRUNK_DEMO), cwd=REPO, env=main_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = workdir / stage / "checkpoints"
  saved = lambda: [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []  # noqa: E731
  deadline = time.time() + 600
  try:
    while time.time() < deadline and proc.poll() is None and not saved():
      time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed mid-{stage}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  return max(saved())


# ---------------------------------------------------------------------------------------- the README's demo

@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo") / "run"
  t0 = time.time()
  proc = run_main(workdir, config=DEMO, timeout=1800)
  return workdir, proc, time.time() - t0


def _tags(event_dir: Path) -> set[str]:
  from tensorboard.backend.event_processing import event_accumulator
  tags = set()
  for f in event_dir.rglob("events.out.tfevents*"):
    acc = event_accumulator.EventAccumulator(str(f), size_guidance={"tensors": 0, "images": 0, "histograms": 0,
                                                                    "scalars": 0})
    acc.Reload()
    for kind, names in acc.Tags().items():
      if isinstance(names, list):
        tags.update(names)
  return tags


def test_demo_runlocal_produces_report_tensorboard_and_checkpoints(demo_run):
  workdir, proc, seconds = demo_run
  print(f"configs/demo.py:runlocal took {seconds:.0f} s")
  report = workdir / "report"
  for name in ("label_issues.csv", "clean_mask.npy", "summary.json", "suspects.png", "p_clean_hist.png"):
    assert (report / name).is_file(), name
  table = pd.read_csv(report / "label_issues.csv")
  for col in ("index", "id", "given_label", "given_name", "predicted_label", "predicted_name", "label_score",
              "is_label_issue", "true_label"):
    assert col in table.columns, col
  assert len(table) == 1000 and sorted(table["index"]) == list(range(1000))
  assert (np.diff(table["label_score"].to_numpy()) >= 0).all()  # ranked worst first
  mask = np.load(report / "clean_mask.npy")
  by_index = table.sort_values("index")
  np.testing.assert_array_equal(mask, ~by_index["is_label_issue"].to_numpy())
  summary = json.loads((report / "summary.json").read_text())
  assert summary["num_examples"] == 1000
  assert summary["phase1_recipe"]["recipe"] == "synthetic"  # the demo's (docs/FIDELITY.md)
  assert json.loads((workdir / "summary.json").read_text())["detection"]["phase1_recipe"]["recipe"] == "synthetic"
  assert "Label health report" in proc.stdout  # the one-screen summary is printed
  # What the demo cut from the method's recipe, said in the report with the method's value beside it.
  assert summary["shortened"]["adapt.epochs"] == {"value": 2, "method": 10}
  assert "shortened against the method's recipe: detect.epochs=3 (10), detect.peft.vpt_tokens=8 (20), " \
         "adapt.epochs=2 (10)" in proc.stdout
  for noise in ("cpu_feature_guard", "oneDNN", "PyTorch was not found"):  # library start-up notes are hidden
    assert noise not in proc.stderr, noise
  for stage in ("pretrain", "detect", "adapt"):
    assert any((workdir / stage / "checkpoints").iterdir()), stage
  # Phase 2 trained on DEFT's clean subset and was evaluated on the 500 test images: top-1 is a count of right
  # answers over them, printed as the report says.
  adapt = json.loads((workdir / "adapt" / "results.json").read_text())
  assert adapt["train_on"] == "deft" and adapt["num_selected"] == int(mask.sum())
  right = adapt["test"]["top1"] * 500
  assert adapt["test"]["count"] == 500 and right == pytest.approx(round(right), abs=1e-6)
  assert f"test top-1 {100 * adapt['test']['top1']:.2f}%" in proc.stdout
  assert "CLIP label-match" in proc.stdout  # the baseline beside DEFT
  tags = _tags(workdir / "tensorboard")
  for tag in ("detect/loss", "detect/loss_cls", "detect/loss_neg", "detect/lr", "detect/selected_fraction",
              "detect/precision", "detect/recall", "detect/f1", "detect/p_clean", "pretrain/loss",
              "pretrain/zero_shot_accuracy", "report/suspects", "report/p_clean", "steps_per_sec", "adapt/loss",
              "adapt/test_top1", "report/clip_label_match/f1"):
    assert tag in tags, f"{tag} not in {sorted(tags)}"


def test_exported_pred_probs_and_features_feed_cleanlab(demo_run):
  import cleanlab
  from cleanlab import filter as cleanlab_filter

  workdir, _, _ = demo_run
  report = workdir / "report"
  probs = np.load(report / "pred_probs.npy")
  feats = np.load(report / "features.npy")
  table = pd.read_csv(report / "label_issues.csv").sort_values("index")
  det = np.load(workdir / "detect" / "detection.npz")
  n = len(table)
  assert probs.shape == (n, 10) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  # The scoring pass's class probabilities: their argmax is its predicted class, for every example.
  np.testing.assert_array_equal(probs.argmax(1), det["pass_suggested"])
  np.testing.assert_array_equal(np.load(workdir / "detect" / "pred_probs.npy"), probs)
  assert feats.shape[0] == n and feats.ndim == 2
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)
  # cleanlab takes them as they are.
  labels = table["given_label"].to_numpy()
  issues = cleanlab_filter.find_label_issues(labels, probs)
  assert issues.shape == (n,) and issues.dtype == bool and 0 < issues.sum() < n
  lab = cleanlab.Datalab({"label": labels}, label_name="label", verbosity=0)
  lab.find_issues(pred_probs=probs, features=feats, issue_types={"label": {}, "outlier": {}})
  assert len(lab.get_issues("label")) == n
  # (runlocal's CLIP is random: the overlap of the findings is checked on real data, tests/test_real_noise.py)


# ------------------------------------------------------------------------------- plumbing on the shrunk demo

@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("shrunk") / "run"
  _main(workdir, *SHRUNK)
  return workdir


def _copy(src: Path, dst: Path, *parts) -> Path:
  """A new workdir holding ``parts`` of ``src`` (all of it when none), e.g. the pretrained CLIP alone."""
  if not parts:
    shutil.copytree(src, dst)
    return dst
  dst.mkdir()
  for part in parts:
    (shutil.copytree if (src / part).is_dir() else shutil.copy)(src / part, dst / part)
  return dst


def test_rerun_of_a_finished_run_reuses_every_stage_and_changes_no_output(shrunk_run, tmp_path):
  copy = _copy(shrunk_run, tmp_path / "again")
  outputs = ("pretrain", "detect", "adapt", "config.json")  # the stages' outputs and checkpoints, the config
  before = _digests(copy, skip=("tensorboard", "report", "summary.json"))
  assert set(outputs) <= {Path(p).parts[0] for p in before}
  proc = _main(copy, *SHRUNK)
  for stage in ("pretrain", "detect", "adapt"):
    assert f"[{stage}] complete: reusing" in proc.stderr, stage
  # No stage ran again and no checkpoint was added (the report and the run's summary are written anew).
  assert _digests(copy, skip=("tensorboard", "report", "summary.json")) == before
  np.testing.assert_array_equal(np.load(copy / "report" / "clean_mask.npy"),
                                np.load(shrunk_run / "report" / "clean_mask.npy"))


def test_sigkill_mid_detection_then_rerun_resumes_and_gives_the_same_detection(shrunk_run, tmp_path):
  """A rerun from scratch would pass a bare equality check too: the rerun must say it resumed, at the step of
  the last checkpoint the killed run saved, and then give bitwise what the uninterrupted run gave."""
  killed = _copy(shrunk_run, tmp_path / "killed", "pretrain", "config.json")  # the same CLIP: skip pretraining
  stages = "--config.stages=('pretrain','detect')"  # not a result field: the workdir guard accepts it
  step = _kill_after_first_checkpoint(killed, "detect", *SHRUNK, stages)
  assert 0 < step < 48 and not (killed / "detect" / "detection.npz").exists()
  proc = _main(killed, *SHRUNK, stages)
  assert f"[detect] resuming at step {step} of 48" in proc.stderr, proc.stderr[-3000:]
  a, b = (np.load(w / "detect" / "detection.npz") for w in (shrunk_run, killed))
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigkill_mid_pretraining_then_rerun_resumes_and_gives_the_same_clip(tmp_path):
  """Pretraining (6 epochs of 4 steps; varied captions with soft vectors, warm-started from a CLIP) killed after its
  first checkpoint resumes from it and ends with the weights of an uninterrupted run, byte for byte."""
  init = save_tiny_clip(tmp_path / "init", seed=7)
  overrides = (*SHRUNK, "--config.pretrain.epochs=6", "--config.stages=('pretrain',)",
               "--config.pretrain.captions.kind=varied", "--config.pretrain.captions.size=64",
               f"--config.pretrain.init={init}")
  whole = tmp_path / "whole"
  _main(whole, *overrides)
  killed = tmp_path / "killed"
  step = _kill_after_first_checkpoint(killed, "pretrain", *overrides)
  assert 0 < step < 24 and not (killed / "pretrain" / "clip").exists()
  proc = _main(killed, *overrides)
  assert f"[pretrain] resuming at step {step} of 24" in proc.stderr, proc.stderr[-3000:]
  assert _digests(whole / "pretrain" / "clip", skip=("pretrain_info.json",)) == _digests(
      killed / "pretrain" / "clip", skip=("pretrain_info.json",))


def test_workdir_of_another_run_is_refused_and_left_intact(shrunk_run, tmp_path):
  copy = _copy(shrunk_run, tmp_path / "other")
  before = _digests(copy, skip=())
  error = _one_error(_main(copy, *SHRUNK, "--config.detect.epochs=5", check=False, timeout=300))
  assert "holds a run with a different configuration" in error
  assert _digests(copy, skip=()) == before


def test_corrupt_checkpoint_is_reported_and_nothing_is_deleted(shrunk_run, tmp_path):
  copy = _copy(shrunk_run, tmp_path / "corrupt")
  (copy / "detect" / "detection.npz").unlink()  # force the detect stage to restore its checkpoint
  for p in sorted(p for p in (copy / "detect" / "checkpoints").rglob("*") if p.is_file()):
    if p.stat().st_size > 1000:
      p.write_bytes(b"\0" * p.stat().st_size)
  before = _digests(copy, skip=())
  error = _one_error(_main(copy, *SHRUNK, check=False, timeout=300))
  assert "cannot restore checkpoint" in error
  # Every file written before is still there, byte for byte (the new run may only add TensorBoard events).
  after = _digests(copy, skip=())
  assert {p: after.get(p) for p in before} == before
  assert all(Path(p).parts[0] == "tensorboard" for p in set(after) - set(before)), set(after) - set(before)


def test_phase2_that_diverges_stops_reports_no_accuracy_and_keeps_its_last_good_checkpoint(shrunk_run, tmp_path):
  """Phase 2 at a learning rate that blows the weights up after its first checkpoint (step 4): exit 2 with one
  line naming the stage and the step, no accuracy written or printed, the step-4 checkpoint kept as it was."""
  copy = _copy(shrunk_run, tmp_path / "diverged", "pretrain", "detect", "config.json")
  proc = _main(copy, *SHRUNK, "--config.adapt.schedule.lr=3e3", "--config.adapt.schedule.decay=constant",
               check=False, timeout=300)
  error = _one_error(proc)
  assert re.search(r"\[adapt\] .* at step \d+ of 8 .*training diverged", error), error
  assert "the last good checkpoint (step 4) is kept" in error, error
  assert "test top-1" not in proc.stdout and not (copy / "adapt" / "results.json").exists()
  assert max(int(p.name) for p in (copy / "adapt" / "checkpoints").iterdir() if p.name.isdigit()) == 4


# ------------------------------------------------------------------------------------------------ bad input

def test_unknown_config_field_is_refused_before_anything_runs(tmp_path):
  error = _one_error(_main(tmp_path / "w", "--config.detect.epochz=3", check=False, timeout=300))
  assert "epochz" in error
  assert not (tmp_path / "w").exists()


def test_class_names_that_do_not_match_the_folders_are_an_error(tmp_path):
  from PIL import Image
  root = tmp_path / "images"
  for c in ("cat", "dog"):
    (root / c).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
  names = tmp_path / "names.txt"
  names.write_text("cat\ndog\nbird\n")
  error = _one_error(_main(tmp_path / "w", f"--config.data.class_names_file={names}",
                           config=f"configs/image_folder.py:root={root},runlocal", check=False, timeout=300))
  assert re.search(r": 3 class names given for 2 classes \(cat, dog\)$", error), error


# ------------------------------------------------------------------------------------------- your own folder

def _image_folder(root: Path, start: int, per_class: int = 10, classes: int = 6) -> Path:
  """``classes`` CIFAR-10 classes x ``per_class`` real JPEGs from the shared assets, as <root>/<class>/<i>.jpg."""
  z = np.load(REPO.parent / "shared" / "assets" / "cifar10-jpeg" / "cifar10_jpeg.npz")
  data, offsets, labels, names = z["train_jpeg"], z["train_offsets"], z["train_labels"], z["class_names"]
  for c in range(classes):
    (root / str(names[c])).mkdir(parents=True)
    for i in np.flatnonzero(labels[start:] == c)[:per_class] + start:
      (root / str(names[c]) / f"{i}.jpg").write_bytes(data[offsets[i]:offsets[i + 1]].tobytes())
  return root


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
  if not (REPO.parent / "shared" / "assets" / "cifar10-jpeg" / "cifar10_jpeg.npz").is_file():
    pytest.skip("needs ../shared/assets/cifar10-jpeg (real images for a folder dataset)")
  base = tmp_path_factory.mktemp("folders")
  return _image_folder(base / "audit", 0), _image_folder(base / "clean", 20000)


FOLDER_FAST = ("--config.stages=('pretrain','detect')", "--config.model.checkpoint=pretrain",
               "--config.pretrain.epochs=2", "--config.pretrain.batch_size=20", "--config.detect.scoring_pass=False",
               "--config.detect.ranking=margin",
               "--config.baselines.methods=()", "--config.report.write_images=False")


@pytest.mark.parametrize("pretrain_on", ["own_clean_folder", "audited_labels"])
def test_runlocal_fits_a_60_image_folder_and_says_what_the_clip_was_pretrained_on(small_folders, tmp_path,
                                                                                   pretrain_on):
  audit, clean = small_folders
  source = (f"--config.data.pretrain_root={clean}" if pretrain_on == "own_clean_folder"
            else "--config.pretrain.split=train")
  proc = _main(tmp_path / "w", *FOLDER_FAST, source, config=f"configs/image_folder.py:root={audit},runlocal")
  table = pd.read_csv(tmp_path / "w" / "report" / "label_issues.csv")
  assert len(table) == 60 and sorted(table["index"]) == list(range(60))  # runlocal's 256 shrink to the folder's 60
  warnings = json.loads((tmp_path / "w" / "report" / "summary.json").read_text()).get("warnings", [])
  audited = [w for w in warnings if "pretrained on the very labels" in w]
  info = json.loads((tmp_path / "w" / "pretrain" / "clip" / "pretrain_info.json").read_text())
  if pretrain_on == "audited_labels":
    assert len(audited) == 1 and "pretrained on the very labels" in proc.stderr
    assert info["split"] == "image_folder/train", info
  else:
    assert not audited and "pretrained on the very labels" not in proc.stderr
    assert info["split"] == "image_folder/pretrain", info  # the clean folder, not the audited train split


def test_folder_without_a_pretraining_set_says_how_to_give_one(small_folders, tmp_path):
  audit, _ = small_folders
  proc = _main(tmp_path / "w", "--config.stages=('pretrain',)", "--config.model.checkpoint=pretrain",
               config=f"configs/image_folder.py:root={audit},runlocal", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("deft_jax: error: ")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "data.pretrain_root" in errors[0] and "data.pretrain_file" in errors[0] and "pretrain.split=train" in errors[0]
