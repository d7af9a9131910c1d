"""End to end: `python -m deft_jax.main --config configs/demo.py:runlocal`, resume after SIGKILL, bad input."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, main_command, main_env, run_main

DEMO = "configs/demo.py:runlocal"


def _main(workdir, *extra, config=DEMO, timeout=900, check=True):
  return run_main(workdir, *extra, config=config, timeout=timeout, check=check)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo") / "run"
  t0 = time.time()
  proc = _main(workdir)
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
  assert "Label health report" in proc.stdout  # the one-screen summary is printed
  for noise in ("cpu_feature_guard", "oneDNN", "PyTorch was not found"):  # library start-up notes are hidden
    assert noise not in proc.stderr, noise
  for stage in ("pretrain", "detect", "adapt"):
    assert any((workdir / stage / "checkpoints").iterdir()), stage
  # Phase 2 trained on DEFT's clean subset and was evaluated on the test split.
  adapt = json.loads((workdir / "adapt" / "results.json").read_text())
  assert adapt["train_on"] == "deft" and adapt["num_selected"] == int(mask.sum())
  assert adapt["test"]["count"] == 500 and 0 <= adapt["test"]["top1"] <= 1
  assert f"test top-1 {100 * adapt['test']['top1']:.2f}%" in proc.stdout
  assert "CLIP label-match" in proc.stdout  # the baseline beside DEFT
  tags = _tags(workdir / "tensorboard")
  for tag in ("detect/loss", "detect/loss_cls", "detect/loss_neg", "detect/lr", "detect/selected_fraction",
              "detect/precision", "detect/recall", "detect/f1", "detect/p_clean", "pretrain/loss",
              "pretrain/zero_shot_accuracy", "report/suspects", "report/p_clean", "steps_per_sec", "adapt/loss",
              "adapt/test_top1", "report/clip_label_match/f1"):
    assert tag in tags, f"{tag} not in {sorted(tags)}"
  assert seconds < 600


def test_rerun_of_a_finished_run_reuses_every_stage(demo_run, tmp_path):
  workdir, _, _ = demo_run
  copy = tmp_path / "again"
  shutil.copytree(workdir, copy)
  before = np.load(copy / "report" / "clean_mask.npy")
  t0 = time.time()
  proc = _main(copy)
  assert "complete: reusing" in proc.stderr
  np.testing.assert_array_equal(np.load(copy / "report" / "clean_mask.npy"), before)
  assert time.time() - t0 < 120


def test_sigkill_mid_detection_then_rerun_gives_the_same_clean_mask(demo_run, tmp_path):
  workdir, _, _ = demo_run
  killed = tmp_path / "killed"
  killed.mkdir()
  shutil.copytree(workdir / "pretrain", killed / "pretrain")  # same pretrained CLIP, skip that stage
  shutil.copy(workdir / "config.json", killed / "config.json")
  # Only the stages up to detection (config.stages does not change results, so the workdir guard accepts it).
  stages = "--config.stages=('pretrain','detect')"
  proc = subprocess.Popen(main_command(killed, stages, config=DEMO), cwd=REPO, env=main_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = killed / "detect" / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    steps = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    if steps:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed mid-detection"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "detect" / "detection.npz").exists()
  _main(killed, stages)
  a = np.load(workdir / "detect" / "detection.npz")
  b = np.load(killed / "detect" / "detection.npz")
  np.testing.assert_array_equal(a["is_clean"], b["is_clean"])
  np.testing.assert_array_equal(a["suggested"], b["suggested"])
  np.testing.assert_allclose(a["p_clean"], b["p_clean"], rtol=0, atol=1e-6)


def test_unknown_config_field_is_refused_before_anything_runs(tmp_path):
  proc = _main(tmp_path / "w", "--config.detect.epochz=3", check=False, timeout=300)
  assert proc.returncode != 0
  assert "epochz" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_workdir_of_another_run_is_refused_and_left_intact(demo_run, tmp_path):
  workdir, _, _ = demo_run
  copy = tmp_path / "other"
  shutil.copytree(workdir, copy)
  before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
  proc = _main(copy, "--config.detect.epochs=5", check=False, timeout=300)
  assert proc.returncode == 2
  assert "different configuration" in proc.stderr and "detect.epochs: 3 -> 5" in proc.stderr
  after = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
  assert after == before


def test_corrupt_checkpoint_is_reported_and_nothing_is_deleted(demo_run, tmp_path):
  workdir, _, _ = demo_run
  copy = tmp_path / "corrupt"
  shutil.copytree(workdir, copy)
  (copy / "detect" / "detection.npz").unlink()  # force the detect stage to restore its checkpoint
  ckpt_files = sorted(p for p in (copy / "detect" / "checkpoints").rglob("*") if p.is_file())
  for p in ckpt_files:
    if p.stat().st_size > 1000:
      p.write_bytes(b"\0" * p.stat().st_size)
  before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  proc = _main(copy, check=False, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "cannot restore checkpoint" in proc.stderr
  # Every file written before is still there, byte for byte (the new run may only add TensorBoard events).
  after = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  assert {p: after.get(p) for p in before} == before
  assert all(p.parent.name == "tensorboard" for p in set(after) - set(before)), set(after) - set(before)


def test_class_names_that_do_not_match_the_folders_are_an_error(tmp_path):
  from PIL import Image
  root = tmp_path / "images"
  for c in ("cat", "dog"):
    (root / c).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
  names = tmp_path / "names.txt"
  names.write_text("cat\ndog\nbird\n")
  proc = _main(tmp_path / "w", f"--config.data.class_names_file={names}",
               config=f"configs/image_folder.py:root={root},runlocal", check=False, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "3" in proc.stderr and "2" in proc.stderr and "class" in proc.stderr.lower()


def test_exported_pred_probs_and_features_feed_cleanlab(demo_run):
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
  cleanlab_filter = pytest.importorskip("cleanlab.filter")
  labels = table["given_label"].to_numpy()
  issues = cleanlab_filter.find_label_issues(labels, probs)
  assert issues.shape == (n,) and issues.dtype == bool and 0 < issues.sum() < n
  datalab = pytest.importorskip("cleanlab").Datalab
  lab = datalab({"label": labels}, label_name="label", verbosity=0)
  lab.find_issues(pred_probs=probs, features=feats, issue_types={"label": {}, "outlier": {}})
  found = lab.get_issues("label")
  assert len(found) == n
  # (runlocal's CLIP is random: the overlap of the findings is checked on real data, tests/test_real_noise.py)


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
