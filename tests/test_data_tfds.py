"""TFDS sources through tfds.testing.mock_data: names, labels, CIFAR-N order, host shards."""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deft_jax.data import datasets, pipeline, tfds_sources
from deft_jax.data._tf import tf
from deft_jax.data.errors import DataError, MissingDataError

SIZE = 16


@pytest.fixture
def manual_dir(tmp_path):
  """A manual_dir holding (empty) copies of every manual file, as a user would provide."""
  for files in tfds_sources.MANUAL_FILES.values():
    for f in files:
      (tmp_path / f).touch()
  return str(tmp_path)


@pytest.mark.parametrize("name,split,num_classes,first_name", [
    ("cifar100", "train", 100, "apple"),
    ("caltech_birds2011", "train", 200, "Black footed Albatross"),
    ("cars196", "test", 196, "AM General Hummer SUV 2000"),
    ("cifar10_n", "train", 10, "airplane"),
    ("cifar100_n", "train", 100, "apple"),
])
def test_mocked_tfds_dataset_gives_clean_names_valid_labels_and_batches(
    name, split, num_classes, first_name, manual_dir):
  with tfds.testing.mock_data(num_examples=12):
    s = tfds_sources.load_tfds(name, split=split, manual_dir=manual_dir)
    assert s.num_classes == num_classes and s.class_names[0] == first_name
    assert all("_" not in n for n in s.class_names)
    assert s.num_examples == 12 and (s.labels < num_classes).all()
    batches = list(pipeline.train_batches(s, global_batch_size=8, image_size=SIZE, seed=0,
                                          epoch=0, process_index=0, process_count=1))
  assert len(batches) == 2 and batches[0]["image"].shape == (8, SIZE, SIZE, 3)
  assert sorted(np.concatenate([b["index"][b["mask"]] for b in batches])) == list(range(12))
  if name.endswith("_n"):  # CIFAR-N carries the clean label beside the human one
    assert s.clean_labels is not None


def test_mocked_imagenet_validation_keeps_first_50_classes_with_readable_names(manual_dir):
  with tfds.testing.mock_data(num_examples=300):
    s = tfds_sources.load_tfds("imagenet2012", split="validation", first_classes=50,
                               manual_dir=manual_dir)
    assert s.class_names[:3] == ["tench", "goldfish", "great white shark"]
    assert s.num_classes == 50 and (s.labels < 50).all() and 0 < s.num_examples < 300
    got = np.concatenate([b["index"][b["mask"]] for b in pipeline.eval_batches(
        s, global_batch_size=4, image_size=SIZE, process_index=0, process_count=1)])
  assert sorted(got) == list(range(s.num_examples))


def test_first_50_imagenet_names_match_tfds_wordnet_list():
  from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=g-import-not-at-top
  from deft_jax.data import class_names as names_lib  # pylint: disable=g-import-not-at-top
  assert [names_lib.first_lemma(x) for x in labels.IMAGENET_LABELS_LIST[:50]] == list(
      names_lib.IMAGENET_FIRST50)


# --------------------------------------------------------------- controlled fake
# A fake TFDS reader that honours `split[a:b]` slices: records in a "TFDS order"
# that differs from the python order, as real TFDS CIFAR does.

N_FAKE = 37


def _png(value: int) -> bytes:
  return tf.io.encode_png(tf.fill([4, 4, 3], tf.cast(value, tf.uint8))).numpy()


@pytest.fixture(scope="module")
def fake_cifar():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 10, N_FAKE)  # python order
  worse = np.where(rng.random(N_FAKE) < 0.4, rng.integers(0, 10, N_FAKE), clean)
  order = rng.permutation(N_FAKE)  # TFDS position t holds python image order[t]
  records = {
      "image": np.array([_png(5 * p) for p in order], dtype=object),
      "label": clean[order], "worse_label": worse[order],
      "aggre_label": clean[order], "random_label1": clean[order],
      "random_label2": clean[order], "random_label3": clean[order],
      "id": np.array([f"train_{p:05d}" for p in order]),
  }
  return {"clean": clean, "worse": worse, "order": order, "records": records}


def _fake_as_dataset(records):
  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, read_config
    assert not shuffle_files, "deft_jax must read TFDS in canonical order"
    m = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", str(split))
    n = len(records["label"])
    a, b = int(m.group(2) or 0), int(m.group(3) or n)
    keys = list(decoders._feature_specs)  # pylint: disable=protected-access
    return tf.data.Dataset.from_tensor_slices(
        {k: list(records[k][a:b]) if k == "image" else records[k][a:b] for k in keys})
  return as_dataset


def _python_index_of_images(split):
  # The fake image of python index p has every pixel equal to 5 * p.
  return split.load_images(np.arange(split.num_examples))[:, 0, 0, 0] // 5


def test_cifar10n_labels_line_up_with_images_despite_tfds_order(fake_cifar, manual_dir):
  with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset(fake_cifar["records"])):
    s = tfds_sources.load_tfds("cifar10_n", split="train", label_set="worse_label",
                               manual_dir=manual_dir)
    py = _python_index_of_images(s)
  np.testing.assert_array_equal(py, fake_cifar["order"])  # index = TFDS position
  np.testing.assert_array_equal(s.labels, fake_cifar["worse"][py])
  np.testing.assert_array_equal(s.clean_labels, fake_cifar["clean"][py])


def test_python_order_cifar_n_file_is_realigned_to_tfds_cifar10(fake_cifar, tmp_path):
  path = tmp_path / "cifar10n_labels.npz"
  np.savez(path, clean_label=fake_cifar["clean"], worse_label=fake_cifar["worse"])
  with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset(fake_cifar["records"])):
    s = tfds_sources.load_tfds("cifar10", split="train", label_set="worse_label",
                               cifar_n_file=str(path))
    py = _python_index_of_images(s)
    np.testing.assert_array_equal(s.labels, fake_cifar["worse"][py])
    np.testing.assert_array_equal(s.clean_labels, fake_cifar["clean"][py])
    # A file in TFDS order (the classic mistake) is refused, not silently misapplied.
    np.savez(path, clean_label=fake_cifar["clean"][fake_cifar["order"]],
             worse_label=fake_cifar["worse"][fake_cifar["order"]])
    with pytest.raises(DataError, match="not in the original CIFAR order"):
      tfds_sources.load_tfds("cifar10", split="train", label_set="worse_label",
                             cifar_n_file=str(path))


@pytest.mark.parametrize("count", [1, 2, 4])
def test_tfds_process_shards_are_disjoint_and_cover_every_example(fake_cifar, count,
                                                                 manual_dir):
  with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset(fake_cifar["records"])):
    s = tfds_sources.load_tfds("cifar10_n", split="train", manual_dir=manual_dir)
    evals, trains, lengths = [], [], set()
    for p in range(count):
      eb = list(pipeline.eval_batches(s, global_batch_size=8, image_size=SIZE,
                                      process_index=p, process_count=count))
      tb = list(pipeline.train_batches(s, global_batch_size=8, image_size=SIZE, seed=1,
                                       epoch=0, process_index=p, process_count=count))
      lengths |= {len(eb), len(tb)}
      evals.append(np.concatenate([b["index"][b["mask"]] for b in eb]))
      trains.append(np.concatenate([b["index"][b["mask"]] for b in tb]))
  assert len(lengths) == 1
  for shards in (evals, trains):
    assert sorted(np.concatenate(shards).tolist()) == list(range(N_FAKE))
  # Each process reads one contiguous slice (tfds.even_splits boundaries).
  bounds = tfds_sources.even_shard_bounds(N_FAKE, count)
  for p, (a, b) in enumerate(bounds):
    assert sorted(evals[p].tolist()) == list(range(a, b))


@pytest.mark.parametrize("n,count", [(37, 4), (37, 2), (8, 3), (100, 7), (3, 4)])
def test_shard_bounds_equal_tfds_even_splits(n, count):
  from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top
  info = {"train": splits_lib.SplitInfo(name="train", shard_lengths=[n], num_bytes=0,
                                        filename_template=None)}
  theirs = []
  for sub in tfds.even_splits("train", count):
    (inst,) = sub.to_absolute(info)
    theirs.append((inst.from_ or 0, n if inst.to is None else inst.to))
  assert tfds_sources.even_shard_bounds(n, count) == theirs


def test_tfds_train_resume_is_bit_exact(fake_cifar, manual_dir):
  with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset(fake_cifar["records"])):
    s = tfds_sources.load_tfds("cifar10_n", split="train", manual_dir=manual_dir)
    kw = dict(global_batch_size=4, image_size=SIZE, seed=2, epoch=1, augment="cifar",
              process_index=1, process_count=2)
    full = list(pipeline.train_batches(s, **kw))
    rest = list(pipeline.train_batches(s, start_step=2, **kw))
  assert len(rest) == len(full) - 2
  for x, y in zip(full[2:], rest):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_missing_manual_download_names_the_files_and_folder(tmp_path):
  manual = tmp_path / "manual"
  with pytest.raises(MissingDataError) as e:
    tfds_sources.load_tfds("imagenet2012", split="validation", data_dir=str(tmp_path),
                           manual_dir=str(manual))
  assert "ILSVRC2012_img_val.tar" in str(e.value) and str(manual) in str(e.value)


def test_webvision_points_at_imagenet_val_option_when_imagenet_is_missing(tmp_path):
  from data_trees import write_webvision  # pylint: disable=g-import-not-at-top
  root = write_webvision(tmp_path / "wv")
  cfg = {"source": "webvision", "root": str(root), "data_dir": str(tmp_path / "tfds"),
         "manual_dir": str(tmp_path / "manual")}
  with pytest.raises(MissingDataError, match="imagenet_val=False"):
    datasets.get_dataset(cfg)
  cfg["imagenet_val"] = False
  assert "test2" not in datasets.get_dataset(cfg)
