"""Offline sources: the packaged demo data and the shared-assets CIFAR-10 + CIFAR-10N reader."""

import hashlib
import pathlib
import re

import numpy as np
import pytest

from deft_jax.data import cifar_offline, datasets, noise
from deft_jax.data.errors import MissingDataError

ASSETS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "assets"
needs_assets = pytest.mark.skipif(
    not (ASSETS / "cifar10-jpeg" / "cifar10_jpeg.npz").is_file(),
    reason=f"shared CIFAR-10 assets not found at {ASSETS}")


def test_demo_file_matches_the_sha256_in_its_readme():
  readme = (cifar_offline.DEMO_FILE.parent / "README.md").read_text()
  listed = re.search(r"cifar10n_demo.npz \| (\d+) \| ([0-9a-f]{64})", readme)
  data = cifar_offline.DEMO_FILE.read_bytes()
  assert listed and int(listed.group(1)) == len(data)
  assert listed.group(2) == hashlib.sha256(data).hexdigest()
  assert len(data) < 9.5e6
  assert (cifar_offline.DEMO_FILE.parent / "LICENSE-CIFAR-N.md").is_file()


def test_demo_splits_sizes_label_sets_and_held_out_pretrain():
  s = cifar_offline.load_demo()
  assert [s[k].num_examples for k in ("train", "pretrain", "test")] == [4000, 5000, 1000]
  assert s["train"].class_names[0] == "airplane" and s["train"].num_classes == 10
  # Published-level noise for the worse set (40.2 % on all 50k).
  assert abs(s["train"].noise_rate() - 0.40) < 0.03
  assert cifar_offline.load_demo(label_set="aggre_label")["train"].noise_rate() < 0.12
  assert s["pretrain"].noise_rate() == 0.0
  assert not set(s["train"].ids) & set(s["pretrain"].ids)
  assert s["train"].ids[0] == "cifar10/train/00000"
  assert s["pretrain"].ids[0] == "cifar10/train/45000"
  sub = cifar_offline.load_demo(train_indices="10:20", test_size=5)
  assert sub["train"].ids[0] == "cifar10/train/00010" and sub["test"].num_examples == 5
  with pytest.raises(ValueError, match="unknown label_set 'noisy_label'"):
    cifar_offline.load_demo(label_set="noisy_label")


@needs_assets
def test_demo_holds_the_assets_exact_jpeg_bytes_and_labels():
  demo = cifar_offline.load_demo(label_set="random_label2")
  full = cifar_offline.load_cifar10n_offline(str(ASSETS), label_set="random_label2",
                                             train_indices="0:4000",
                                             pretrain_indices="45000:50000", test_size=1000)
  for key in ("train", "pretrain", "test"):
    a, b = demo[key], full[key]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.clean_labels, b.clean_labels)
    np.testing.assert_array_equal(a.ids, b.ids)
    for i in (0, 123, a.num_examples - 1):
      assert a.reader.read(i) == b.reader.read(i)


@needs_assets
def test_offline_reader_slices_and_published_noise_rates():
  full = cifar_offline.load_cifar10n_offline(str(ASSETS), label_set="worse_label")
  assert full["train"].num_examples == 50000 and full["test"].num_examples == 10000
  assert round(100 * full["train"].noise_rate(), 2) == 40.21  # the published figure
  s = cifar_offline.load_cifar10n_offline(str(ASSETS), pretrain_indices="40000:50000",
                                          test_size=200)
  assert s["train"].num_examples == 40000 and s["pretrain"].num_examples == 10000
  assert s["train"].ids[-1] == "cifar10/train/39999" and s["test"].num_examples == 200
  assert s["pretrain"].noise_rate() == 0.0
  aggre = cifar_offline.load_cifar10n_offline(str(ASSETS), label_set="aggre_label",
                                              train_indices="0:10000")["train"]
  assert aggre.num_examples == 10000 and abs(aggre.noise_rate() - 0.0901) < 0.01


@needs_assets
def test_offline_reader_refuses_overlapping_pretrain_and_bad_root(tmp_path):
  with pytest.raises(ValueError, match="overlap"):
    cifar_offline.load_cifar10n_offline(str(ASSETS), train_indices="0:10000",
                                        pretrain_indices="9000:12000")
  with pytest.raises(ValueError, match="outside"):
    cifar_offline.load_cifar10n_offline(str(ASSETS), train_indices="49000:51000")
  with pytest.raises(MissingDataError, match="cifar10-jpeg/cifar10_jpeg.npz"):
    cifar_offline.load_cifar10n_offline(str(tmp_path))


def test_noisy_labels_are_saved_beside_the_run_and_reused(tmp_path):
  cfg = {"source": "demo", "label_set": "clean_label",
         "noise": {"type": "pair", "ratio": 0.3, "seed": 4}}
  path = tmp_path / "run" / "noisy_labels.npz"
  first = datasets.get_dataset(cfg, noisy_labels_path=path)["train"]
  assert path.is_file() and first.noise_report.kind == "pair"
  assert abs(first.noise_rate() - 0.3) < 0.01
  saved, _ = noise.load_noisy_labels(path)
  np.testing.assert_array_equal(saved, first.labels)
  # Another seed in the config, but the run's file wins: the run stays reproducible.
  cfg["noise"]["seed"] = 99
  again = datasets.get_dataset(cfg, noisy_labels_path=path)["train"]
  np.testing.assert_array_equal(again.labels, first.labels)
  # The same file cannot be applied to other examples.
  cfg["train_indices"] = "0:2000"
  with pytest.raises(Exception, match="labels"):
    datasets.get_dataset(cfg, noisy_labels_path=path)


def test_idn_noise_through_get_dataset_uses_raw_cifar_pixels(tmp_path):
  cfg = {"source": "demo", "label_set": "clean_label", "train_indices": "0:1000",
         "noise": {"type": "idn", "ratio": 0.3, "seed": 1}}
  split = datasets.get_dataset(cfg)["train"]
  images = split.load_images(np.arange(1000))
  want, _ = noise.instance_noise(split.clean_labels, images, 10, 0.3, seed=1)
  np.testing.assert_array_equal(split.labels, want)
  assert abs(split.noise_rate() - 0.3) < 0.05
