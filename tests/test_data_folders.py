"""Folder sources on temporary trees of real CIFAR-10 JPEGs, and their bad-input errors."""

import numpy as np
import pytest
from data_trees import (CLOTHING_NAMES, real_jpegs, write_clothing1m, write_tiny_imagenet,
                               write_webvision)

from deft_jax.data import datasets, folders, pipeline, sampling
from deft_jax.data.errors import (ClassNamesError, CorruptImageError, EmptyClassError,
                                  LabelRangeError, MissingDataError)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


@pytest.fixture(scope="module")
def jpegs():
  return real_jpegs(40)


def _write_folder(root, jpegs, labels, classes=CLASSES):
  for k, (b, y) in enumerate(zip(jpegs, labels)):
    d = root / classes[y]
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{k:03d}.jpg").write_bytes(b)


def _decoded_equal(split, index, jpeg_bytes):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  ref = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))
  return np.array_equal(split.load_images([index])[0], ref)


def test_image_folder_reads_classes_labels_and_pixels(tmp_path, jpegs):
  data, labels = jpegs
  _write_folder(tmp_path / "train", data[:30], labels[:30])
  _write_folder(tmp_path / "test", data[30:], labels[30:])
  s = datasets.get_dataset({"source": "image_folder", "root": str(tmp_path)})
  train, test = s["train"], s["test"]
  present = sorted({CLASSES[y] for y in labels[:30]})
  assert train.class_names == present  # sorted folder names
  assert train.num_examples == 30 and test.num_examples == 10
  for i in range(train.num_examples):  # each file sits in its label's folder
    assert f"/{train.class_names[train.labels[i]]}/" in train.ids[i]
  k = int(train.ids[5].rsplit("/", 1)[1][:3])
  assert _decoded_equal(train, 5, data[k])
  got = np.concatenate([b["label"][b["mask"]] for b in pipeline.eval_batches(
      test, global_batch_size=4, image_size=16, process_index=0, process_count=1)])
  assert sorted(got) == sorted(test.labels)


def test_image_folder_errors_name_empty_class_and_wrong_name_count(tmp_path, jpegs):
  data, labels = jpegs
  _write_folder(tmp_path, data[:6], [0, 0, 1, 1, 2, 2])
  (tmp_path / "zebra").mkdir()
  with pytest.raises(EmptyClassError, match="zebra"):
    folders.load_image_folder(str(tmp_path))
  (tmp_path / "zebra").rmdir()
  with pytest.raises(ClassNamesError, match="2 class names given for 3 classes"):
    folders.load_image_folder(str(tmp_path), class_names=["a", "b"])
  s = folders.load_image_folder(str(tmp_path), class_names=["plane", "car", "little_bird"])
  assert s["train"].class_names == ["plane", "car", "little bird"]


def test_csv_reads_labels_names_and_clean_labels(tmp_path, jpegs):
  data, labels = jpegs
  assert len(set(labels.tolist())) == 10  # every class appears among the 40
  rows = ["path,label,clean_label"]
  for k in range(40):
    (tmp_path / f"img{k}.jpg").write_bytes(data[k])
    given = CLASSES[labels[k]] if k % 2 else str(labels[k])  # names or ints both work
    rows.append(f"img{k}.jpg,{given},{labels[k] if k < 10 else ''}")
  (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
  (tmp_path / "names.txt").write_text("\n".join(CLASSES) + "\n")
  s = datasets.get_dataset({"source": "csv", "train_file": str(tmp_path / "train.csv"),
                            "class_names_file": str(tmp_path / "names.txt")})["train"]
  np.testing.assert_array_equal(s.labels, labels)
  np.testing.assert_array_equal(s.clean_labels[:10], labels[:10])
  assert (s.clean_labels[10:] == -1).all()
  assert _decoded_equal(s, 7, data[7])


def test_csv_errors_name_line_value_and_class_count(tmp_path, jpegs):
  data, labels = jpegs
  for k in range(12):
    (tmp_path / f"{k}.jpg").write_bytes(data[k])
  names = tmp_path / "names.txt"
  names.write_text("\n".join(CLASSES) + "\n")
  bad = tmp_path / "bad.csv"
  bad.write_text("0.jpg,3\n1.jpg,12\n")
  with pytest.raises(LabelRangeError, match=r"bad.csv line 2: label 12 is outside \[0, 10\)"):
    folders.load_csv(str(bad), class_names_file=str(names))
  few = tmp_path / "few.csv"
  few.write_text("".join(f"{k}.jpg,{k % 3}\n" for k in range(12)))
  with pytest.raises(ClassNamesError, match="10 class names but the labels use 3 classes"):
    folders.load_csv(str(few), class_names_file=str(names))
  with pytest.raises(ClassNamesError, match="class_names"):
    folders.load_csv(str(few))


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path, jpegs):
  data, labels = jpegs
  _write_folder(tmp_path, data[:12], labels[:12])
  victim = sorted(tmp_path.glob("*/*.jpg"))[4]
  victim.write_bytes(data[0][:40])  # a truncated JPEG
  cfg = {"source": "image_folder", "root": str(tmp_path)}
  split = datasets.get_dataset(cfg)["train"]
  with pytest.raises(CorruptImageError, match=victim.name):
    list(pipeline.eval_batches(split, global_batch_size=4, image_size=16, process_index=0,
                               process_count=1))
  skipped = datasets.get_dataset({**cfg, "skip_corrupt": True})["train"]
  assert skipped.num_examples == 11 and skipped.skipped == (str(victim),)
  assert str(victim) not in skipped.ids
  assert sum(b["mask"].sum() for b in pipeline.eval_batches(
      skipped, global_batch_size=4, image_size=16, process_index=0, process_count=1)) == 11


def test_tiny_imagenet_uses_sorted_wnids_words_and_val_annotations(tmp_path):
  root = write_tiny_imagenet(tmp_path / "tiny")
  s = datasets.get_dataset({"source": "tiny_imagenet", "root": str(root)})
  # sorted wnids: n01000001 goldfish, n02000003 crane, n03000002 crane, derrick;
  # the shared first lemma "crane" is disambiguated.
  assert s["train"].class_names == ["goldfish", "crane", "crane, derrick"]
  assert np.bincount(s["train"].labels).tolist() == [3, 3, 3]
  assert all(s["train"].ids[i].split("/")[-3] == ["n01000001", "n02000003", "n03000002"][y]
             for i, y in enumerate(s["train"].labels))
  wnid_of_val = ["n02000003", "n01000001", "n03000002"]  # val_j -> wnids.txt[j % 3]
  sorted_wnids = sorted(wnid_of_val)
  expect = [sorted_wnids.index(wnid_of_val[j % 3]) for j in range(9)]
  assert s["test"].labels.tolist() == expect
  assert s["train"].load_images([0]).shape == (1, 32, 32, 3)


def test_tiny_imagenet_missing_files_are_listed(tmp_path):
  root = write_tiny_imagenet(tmp_path / "tiny")
  (root / "val/val_annotations.txt").unlink()
  with pytest.raises(MissingDataError, match="val/val_annotations.txt") as e:
    folders.load_tiny_imagenet(str(root))
  assert "train/<wnid>/images" in str(e.value)


def test_clothing1m_reads_kv_lists_and_partial_clean_labels(tmp_path):
  root = write_clothing1m(tmp_path / "c1m")
  s = datasets.get_dataset({"source": "clothing1m", "root": str(root)})
  train, test = s["train"], s["test"]
  assert train.class_names[0] == "T-Shirt" and train.num_classes == 14
  assert train.num_examples == 28 and test.num_examples == 6
  np.testing.assert_array_equal(train.labels, np.arange(28) % 14)
  np.testing.assert_array_equal(train.clean_labels[:5], (np.arange(5) + 1) % 14)
  assert (train.clean_labels[5:] == -1).all()
  assert train.noise_rate() == 1.0  # known clean labels all differ from the noisy ones here
  assert test.ids[0].startswith("images/")


def test_clothing1m_wrong_category_count_and_missing_lists_are_errors(tmp_path):
  root = write_clothing1m(tmp_path / "c1m")
  (root / "category_names_eng.txt").write_text("\n".join(CLOTHING_NAMES[:13]) + "\n")
  with pytest.raises(ClassNamesError, match="13 names, want 14"):
    folders.load_clothing1m(str(root))
  (root / "noisy_label_kv.txt").unlink()
  with pytest.raises(MissingDataError, match="noisy_label_kv.txt"):
    folders.load_clothing1m(str(root))


def test_clothing1m_balanced_subset_is_balanced_reproducible_and_saved(tmp_path):
  root = write_clothing1m(tmp_path / "c1m")
  subset_file = tmp_path / "subset.npz"
  cfg = {"source": "clothing1m", "root": str(root), "balanced_subset": 14,
         "balanced_subset_seed": 3, "balanced_subset_file": str(subset_file)}
  a = datasets.get_dataset(cfg)["train"]
  assert subset_file.is_file() and np.bincount(a.labels, minlength=14).tolist() == [1] * 14
  b = datasets.get_dataset(cfg)["train"]  # reloaded from the file
  np.testing.assert_array_equal(a.parent_indices, b.parent_indices)
  run = tmp_path / "run"  # without a file name, the subset is kept in the run's folder
  cfg["balanced_subset_file"] = ""
  c = datasets.get_dataset(cfg, noisy_labels_path=run / "noisy_labels.npz")["train"]
  np.testing.assert_array_equal(sampling.load_subset(run / "balanced_subset.npz"),
                                c.parent_indices)
  np.testing.assert_array_equal(sampling.load_subset(subset_file), a.parent_indices)
  labels = np.repeat(np.arange(4), [50, 2, 30, 30])
  idx = sampling.class_balanced_subset(labels, 4, 40, seed=0)
  assert len(idx) == 40 and np.bincount(labels[idx]).tolist()[1] == 2  # short class: all it has


def test_webvision_keeps_first_50_classes_of_the_google_subset(tmp_path):
  root = write_webvision(tmp_path / "wv")
  s = datasets.get_dataset({"source": "webvision", "root": str(root), "imagenet_val": False})
  train, test = s["train"], s["test"]
  assert train.num_classes == 50 and train.class_names[:2] == ["name0", "name1"]
  assert train.num_examples == 6 and all("/google/" in i for i in train.ids)
  assert test.num_examples == 6 and (test.labels < 50).all()
  both = datasets.get_dataset({"source": "webvision", "root": str(root), "imagenet_val": False,
                               "webvision_subset": "google+flickr"})["train"]
  assert both.num_examples == 12
  assert train.load_images([0]).shape == (1, 32, 32, 3)


def test_unknown_source_and_missing_root_are_clear_errors():
  from deft_jax.data.errors import UnknownSourceError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UnknownSourceError, match="tfds:cifar100.*clothing1m"):
    datasets.get_dataset({"source": "cifar1000"})
  with pytest.raises(ValueError, match="needs data.root"):
    datasets.get_dataset({"source": "clothing1m"})
  with pytest.raises(ValueError, match="does not apply"):
    datasets.get_dataset({"source": "clothing1m", "root": "/x", "label_set": "worse_label"})
  with pytest.raises(ValueError, match="unknown config field data.nosie"):
    datasets.get_dataset({"source": "demo", "nosie": {}})
