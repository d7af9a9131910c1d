"""The notebook API: find_label_issues on in-memory images (real CIFAR-10 JPEGs decoded) with a tiny random CLIP."""

import numpy as np
import pytest

from conftest import save_tiny_clip
from deft_jax import api
from deft_jax.data import cifar_offline
from deft_jax.errors import DeftError
from deft_jax.report import label_issues_table

N = 24
OVERRIDES = {"model.preset": "tiny", "data.image_size": 32, "data.normalization": "cifar10",
             "data.train_augment": "cifar", "detect.epochs": 2, "detect.warmup_epochs": 1, "detect.batch_size": 8,
             "detect.eval_batch_size": 8, "detect.n_ctx": 4, "detect.peft.vpt_tokens": 2,
             "log_every_steps": 1000}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return save_tiny_clip(tmp_path_factory.mktemp("clip"), seed=3)


@pytest.fixture(scope="module")
def data():
  train = cifar_offline.load_demo(train_indices=f"0:{N}")["train"]
  return train.load_images(np.arange(N)), train.labels, train.class_names, train.clean_labels


def test_table_matches_the_stage_outputs_and_a_rerun_reuses_them(ckpt, data, tmp_path):
  images, labels, names, clean = data
  table, summary = api.find_label_issues(images, labels, names, checkpoint=ckpt, clean_labels=clean,
                                         workdir=tmp_path, overrides=OVERRIDES, return_summary=True)
  assert len(table) == N and sorted(table["index"]) == list(range(N))
  assert np.all(np.diff(table["label_score"].to_numpy()) >= 0)  # worst first
  np.testing.assert_array_equal(table.sort_values("index")["given_label"].to_numpy(), labels)
  assert list(table["given_name"]) == [names[i] for i in table["given_label"]]
  assert list(table["id"][:2]) == [f"image_{i}" for i in table["index"][:2]]
  # The table is exactly the report table of the detection written in the workdir.
  saved = dict(np.load(tmp_path / "detect" / "detection.npz"))
  want = label_issues_table(saved, given=labels, class_names=names, clean_labels=clean,
                            ids=[f"image_{i}" for i in range(N)])
  assert table.equals(want)
  assert summary["num_flagged"] == int((~saved["is_clean"]).sum())
  # Calling again with the same workdir reuses the finished detection: identical table.
  again = api.find_label_issues(images, labels, names, checkpoint=ckpt, clean_labels=clean, workdir=tmp_path,
                                overrides=OVERRIDES)
  assert again.equals(table)


def test_paths_and_arrays_give_the_same_table(ckpt, data, tmp_path):
  from PIL import Image

  images, labels, names, _ = data
  paths = []
  for i, im in enumerate(images[:8]):
    paths.append(tmp_path / f"{i}.png")
    Image.fromarray(im).save(paths[-1])
  a = api.find_label_issues(images[:8], labels[:8], names, checkpoint=ckpt, workdir=tmp_path / "a",
                            overrides=OVERRIDES)
  b = api.find_label_issues(paths, labels[:8], names, checkpoint=ckpt, workdir=tmp_path / "b",
                            overrides=OVERRIDES, ids=[f"image_{i}" for i in range(8)])
  np.testing.assert_allclose(a["label_score"], b["label_score"], atol=1e-6)
  assert list(a["index"]) == list(b["index"])


@pytest.mark.parametrize("case, match", [
    ("label_out_of_range", r"labels.*\[0, 10\)|outside|out of range"),
    ("count_mismatch", r"24 images but 23 labels"),
    ("bad_dtype", r"uint8 \[N, H, W, 3\]"),
    ("missing_file", r"do not exist"),
    ("unknown_override", r"unknown config field 'detect.nope'"),
])
def test_bad_input_is_a_clear_error(ckpt, data, tmp_path, case, match):
  images, labels, names, _ = data
  kw = dict(checkpoint=ckpt, workdir=tmp_path, overrides=OVERRIDES)
  if case == "label_out_of_range":
    bad = labels.copy()
    bad[5] = 10
    args = (images, bad, names)
  elif case == "count_mismatch":
    args = (images, labels[:-1], names)
  elif case == "bad_dtype":
    args = (images.astype(np.float32), labels, names)
  elif case == "missing_file":
    args = ([tmp_path / "nope.jpg"], labels[:1], names)
  else:
    args = (images, labels, names)
    kw["overrides"] = {**OVERRIDES, "detect.nope": 1}
  with pytest.raises(DeftError, match=match):
    api.find_label_issues(*args, **kw)
  assert not (tmp_path / "detect").exists()  # nothing ran


def _jpegs(n):
  """The first n demo images as their original CIFAR-10 JPEG bytes."""
  train = cifar_offline.load_demo(train_indices=f"0:{n}")["train"]
  return [train.reader.read(i) for i in range(n)], train.labels, train.class_names


def test_hugging_face_dataset_gives_the_table_of_the_same_files_on_disk(ckpt, tmp_path):
  hf = pytest.importorskip("datasets")
  blobs, labels, names = _jpegs(8)
  features = hf.Features({"img": hf.Image(), "fine": hf.ClassLabel(names=[n.replace(" ", "_") for n in names])})
  ds = hf.Dataset.from_dict({"img": [{"bytes": b, "path": None} for b in blobs], "fine": labels.tolist()},
                            features=features)
  paths = []
  for i, b in enumerate(blobs):
    paths.append(tmp_path / f"{i}.jpg")
    paths[-1].write_bytes(b)
  # Labels and class names come from the Dataset ("_" read as a space, as everywhere else).
  a = api.find_label_issues(ds, checkpoint=ckpt, workdir=tmp_path / "hf", overrides=OVERRIDES,
                            image_column="img", label_column="fine")
  b = api.find_label_issues(paths, labels, names, checkpoint=ckpt, workdir=tmp_path / "files", overrides=OVERRIDES)
  assert list(a["given_name"]) == list(b["given_name"]) and list(a["index"]) == list(b["index"])
  np.testing.assert_array_equal(a["label_score"], b["label_score"])  # the same bytes: the same scores
  with pytest.raises(DeftError, match="no column 'image'"):
    api.find_label_issues(ds, checkpoint=ckpt, workdir=tmp_path / "bad", overrides=OVERRIDES)
  assert not (tmp_path / "bad" / "detect").exists()


def test_tfds_name_and_split_read_labels_and_class_names_from_the_dataset(ckpt, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  from deft_jax import checkpoint as ckpt_lib
  from deft_jax.data import tfds_sources
  # tfds.testing.mock_data redirects the whole process's file system while it builds a dataset (once per epoch
  # here): an asynchronous Orbax save running at that moment would write into the mock's temp dir. Saves are
  # synchronous in this test so that none overlaps.
  init = ckpt_lib.StageCheckpointer.__init__
  monkeypatch.setattr(ckpt_lib.StageCheckpointer, "__init__",
                      lambda self, *a, **k: init(self, *a, **{**k, "async_save": False}))
  with tfds.testing.mock_data(num_examples=12):
    want = tfds_sources.load_tfds("cifar10", split="test")
    table = api.find_label_issues(tfds="cifar10", split="test", checkpoint=ckpt, workdir=tmp_path,
                                  overrides=OVERRIDES)
  assert len(table) == 12
  by_index = table.sort_values("index")
  np.testing.assert_array_equal(by_index["given_label"], want.labels)
  assert list(by_index["given_name"]) == [want.class_names[i] for i in want.labels]
  assert list(by_index["id"]) == list(want.ids)
  with pytest.raises(DeftError, match="either tfds= or images"):
    api.find_label_issues(np.zeros((1, 8, 8, 3), np.uint8), [0], ["a"], tfds="cifar10")
