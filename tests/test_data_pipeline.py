"""tf.data pipelines: host sharding, determinism, resume, padding, label gathering."""

import numpy as np
import pytest

from deft_jax.data import cifar_offline, pipeline
from deft_jax.data.errors import CorruptImageError
from deft_jax.data.splits import FileReader, LabeledSplit

SIZE = 16  # small images keep the tests fast; the transforms do not depend on size


@pytest.fixture(scope="module")
def split():
  # 37 real CIFAR-10 JPEGs: an odd count, so every batch size leaves padding.
  return cifar_offline.load_demo(train_indices="0:37")["train"]


def _collect(batches):
  return [dict(b) for b in batches]


def _real(batches, key="index"):
  return np.concatenate([b[key][b["mask"]] for b in batches])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_eval_shards_are_disjoint_and_cover_every_example_once(split, count):
  seen = []
  lengths = set()
  for p in range(count):
    batches = _collect(pipeline.eval_batches(split, global_batch_size=8, image_size=SIZE,
                                             process_index=p, process_count=count))
    lengths.add(len(batches))
    assert all(b["image"].shape == (8 // count, SIZE, SIZE, 3) for b in batches)
    seen.append(_real(batches))
  assert len(lengths) == 1, "every process must yield the same number of batches"
  everything = np.concatenate(seen)
  assert sorted(everything.tolist()) == list(range(split.num_examples))
  for a in range(count):
    for b in range(a + 1, count):
      assert not set(seen[a]) & set(seen[b])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_train_epoch_visits_every_example_once_over_processes(split, count):
  seen = []
  for p in range(count):
    batches = _collect(pipeline.train_batches(
        split, global_batch_size=8, image_size=SIZE, seed=3, epoch=1, augment="cifar",
        process_index=p, process_count=count))
    assert len(batches) == pipeline.steps_per_epoch(split, 8, count) == 5
    seen.append(_real(batches))
  assert sorted(np.concatenate(seen).tolist()) == list(range(split.num_examples))


def test_global_batch_is_the_same_for_any_process_count(split):
  def global_batches(count):
    per_proc = [_collect(pipeline.train_batches(
        split, global_batch_size=8, image_size=SIZE, seed=5, epoch=0, augment="cifar",
        process_index=p, process_count=count)) for p in range(count)]
    return [np.concatenate([per_proc[p][s]["index"] for p in range(count)])
            for s in range(len(per_proc[0]))], per_proc
  one, one_b = global_batches(1)
  four, four_b = global_batches(4)
  for a, b in zip(one, four):
    np.testing.assert_array_equal(a, b)
  # And the pixels agree too: augmentation is keyed by (seed, epoch, index) only.
  np.testing.assert_array_equal(one_b[0][2]["image"][2:4], four_b[1][2]["image"])


def test_train_is_deterministic_and_epochs_shuffle_differently(split):
  kw = dict(global_batch_size=8, image_size=SIZE, seed=7, augment="random_resized_crop",
            process_index=0, process_count=1)
  a = _collect(pipeline.train_batches(split, epoch=0, **kw))
  b = _collect(pipeline.train_batches(split, epoch=0, **kw))
  c = _collect(pipeline.train_batches(split, epoch=1, **kw))
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_resume_from_start_step_is_bit_exact(split):
  kw = dict(global_batch_size=8, image_size=SIZE, seed=11, epoch=2, augment="resize_crop",
            process_index=1, process_count=2)
  full = _collect(pipeline.train_batches(split, **kw))
  resumed = pipeline.train_batches(split, start_step=3, **kw)
  assert len(resumed) == len(full) - 3
  rest = _collect(resumed)
  assert len(rest) == len(full) - 3
  for x, y in zip(full[3:], rest):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_labels_and_clean_labels_are_gathered_by_index_and_padding_is_masked(split):
  noisy = (split.labels + 1) % split.num_classes  # labels that exist only on the host
  relabelled = split.with_labels(noisy)
  batches = _collect(pipeline.eval_batches(relabelled, global_batch_size=8, image_size=SIZE,
                                           process_index=0, process_count=1))
  last = batches[-1]
  assert last["mask"].sum() == 37 % 8 and not last["mask"][37 % 8:].any()
  assert (last["index"][~last["mask"]] == 0).all()
  assert (last["clean_label"][~last["mask"]] == -1).all()
  idx, lab, clean = _real(batches), _real(batches, "label"), _real(batches, "clean_label")
  np.testing.assert_array_equal(lab, noisy[idx])
  np.testing.assert_array_equal(clean, split.clean_labels[idx])
  assert all(b["index"].dtype == np.int32 and b["mask"].dtype == bool for b in batches)


def test_eval_images_are_normalised_clip_views(split):
  from deft_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  batch = next(iter(pipeline.eval_batches(split, global_batch_size=4, image_size=SIZE,
                                          process_index=0, process_count=1)))
  ref = preprocess.clip_preprocess_numpy(split.load_images(batch["index"]), SIZE)
  # TF vs PIL bicubic downscale 32 -> 16: a few grey levels at most.
  assert np.abs(batch["image"] - ref).mean() < 0.02
  assert batch["image"].dtype == np.float32


def test_augmentation_depends_on_index_not_on_batch_position(split):
  kw = dict(global_batch_size=8, image_size=SIZE, augment="random_resized_crop",
            process_index=0, process_count=1)
  a = _collect(pipeline.train_batches(split, seed=1, epoch=0, **kw))
  b = _collect(pipeline.train_batches(split, seed=1, epoch=3, **kw))
  img_a = {int(i): im for bt in a for i, im, m in zip(bt["index"], bt["image"], bt["mask"]) if m}
  img_b = {int(i): im for bt in b for i, im, m in zip(bt["index"], bt["image"], bt["mask"]) if m}
  # Different epochs: different crops of the same example.
  assert sum(not np.array_equal(img_a[i], img_b[i]) for i in img_a) > 30


def test_start_step_skips_before_decoding(tmp_path, split):
  # A corrupt file inside the first batches: resuming past them must not touch it,
  # while reading from step 0 fails with an error naming the file.
  paths = []
  for i in range(16):
    p = tmp_path / f"{i}.jpg"
    p.write_bytes(split.reader.read(i))
    paths.append(str(p))
  order = np.random.default_rng([0, 0]).permutation(16)  # the pipeline's epoch-0 order
  bad = int(order[0])
  (tmp_path / f"{bad}.jpg").write_bytes(b"not a jpeg")
  files = LabeledSplit(name="files", class_names=split.class_names, labels=split.labels[:16],
                       clean_labels=None, ids=paths, reader=FileReader(paths))
  kw = dict(global_batch_size=4, image_size=SIZE, seed=0, epoch=0, augment="none",
            process_index=0, process_count=1)
  assert len(_collect(pipeline.train_batches(files, start_step=1, **kw))) == 3
  with pytest.raises(CorruptImageError, match=f"{bad}.jpg"):
    _collect(pipeline.train_batches(files, **kw))


@pytest.mark.parametrize("count", [1, 2, 4])
def test_split_tf_dataset_shards_cover_the_split_once(split, count):
  seen = []
  for p in range(count):
    for ex in split.tf_dataset(p, count).as_numpy_iterator():
      assert ex["image"] == split.reader.read(int(ex["index"]))  # encoded bytes
      seen.append(int(ex["index"]))
  assert sorted(seen) == list(range(split.num_examples))


def test_bad_batch_arguments_are_rejected(split):
  with pytest.raises(ValueError, match="multiple of the process count"):
    pipeline.eval_batches(split, global_batch_size=6, image_size=SIZE, process_index=0,
                          process_count=4)
  with pytest.raises(ValueError, match="start_step"):
    pipeline.train_batches(split, global_batch_size=8, image_size=SIZE, seed=0, epoch=0,
                           start_step=99, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="unknown augment"):
    pipeline.train_batches(split, global_batch_size=8, image_size=SIZE, seed=0, epoch=0,
                           augment="mixup", process_index=0, process_count=1)
