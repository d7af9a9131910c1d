"""The scoring pass (detect/scoring.py): text features once per pass, outputs that leave the devices batch by
batch and stream to .npy files, the several-process merge of those files, and the top-k export."""

import types

import jax
import numpy as np
import pytest

from conftest import tiny_config
from deft_jax import parallel
from deft_jax.detect import scoring
from deft_jax.detect import step as detect_step
from deft_jax.detect import train as detect_train
from deft_jax.detect.detector import Detector

C = 50


def _detector(mesh, n):
  c = tiny_config(detect=dict(epochs=1, batch_size=8, n_ctx=4))
  return Detector(c, class_names=[f"class {i}" for i in range(C)], num_examples=n, mesh=mesh, checkpoint=None,
                  steps_per_epoch=1)


def _batches(n, b=8, seed=0):
  """Synthetic eval batches in the eval order: every index once, the last batch padded."""
  rng = np.random.default_rng(seed)
  for start in range(0, n, b):
    idx = np.arange(start, start + b)
    yield {"image": rng.normal(size=(b, 32, 32, 3)).astype(np.float32), "index": (idx % n).astype(np.int32),
           "label": (idx * 7 % C).astype(np.int32), "clean_label": np.full(b, -1, np.int32), "mask": idx < n}


def _split(n):
  return types.SimpleNamespace(num_examples=n, class_names=[f"class {i}" for i in range(C)])


@pytest.fixture(scope="module")
def mesh4():
  return parallel.make_mesh([("data", 4)], jax.devices()[:4])


def test_pass_with_text_features_once_matches_the_per_batch_scores_and_writes_files(mesh4, tmp_path):
  """Old behaviour caught: the pass recomputing the prompts per batch with replicated outputs was the reference;
  a pass computing them once must give the same scores, probabilities and embeddings (to float rounding), in
  index order, in pred_probs.npy / features.npy."""
  n = 45
  det = _detector(mesh4, n)
  params = det.init_state(jax.random.key(0))["params"]
  per_batch = det.jit_score(params, with_embedding=True)
  want = parallel.gather_by_index([per_batch(params, parallel.shard_batch(b, mesh4)) for b in _batches(n)], n)
  got = detect_train.score_split(det, params, _split(n), batch_size=8, data_kw={}, with_embedding=True,
                                 directory=tmp_path, batches=_batches(n))
  for k in ("p_clean", "margin", "label_prob", "pred_probs", "embedding"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for k in ("is_clean", "suggested"):
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  np.testing.assert_array_equal(np.load(tmp_path / "pred_probs.npy"), got["pred_probs"])
  np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), got["embedding"])
  assert not list(tmp_path.glob("*.tmp.npy")) and not list(tmp_path.glob(".*part*"))


def test_topk_export_holds_the_k_largest_probabilities_and_their_classes(mesh4, tmp_path):
  """Old behaviour caught: only the full [N, C] matrix could be exported."""
  n = 24
  det = _detector(mesh4, n)
  params = det.init_state(jax.random.key(1))["params"]
  full = detect_train.score_split(det, params, _split(n), batch_size=8, data_kw={}, with_embedding=True,
                                  batches=_batches(n))["pred_probs"]
  top = detect_train.score_split(det, params, _split(n), batch_size=8, data_kw={}, with_embedding=True,
                                 pred_probs="topk", topk=5, directory=tmp_path, batches=_batches(n))
  assert "pred_probs" not in top and not (tmp_path / "pred_probs.npy").exists()
  classes = np.load(tmp_path / "pred_probs_topk_classes.npy")
  values = np.load(tmp_path / "pred_probs_topk.npy")
  assert classes.shape == values.shape == (n, 5)
  np.testing.assert_allclose(values, np.take_along_axis(full, classes, 1), rtol=1e-6)
  np.testing.assert_allclose(values, -np.sort(-full, axis=1)[:, :5], rtol=1e-6)


def _live_bytes() -> int:
  return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())


def _peak_live_bytes_of_pass(det, params, n, tmp_path) -> int:
  baseline = _live_bytes()
  peak = [0]

  def watched():
    for b in _batches(n):
      peak[0] = max(peak[0], _live_bytes() - baseline)
      yield b

  detect_train.score_split(det, params, _split(n), batch_size=8, data_kw={}, with_embedding=True,
                           directory=tmp_path, batches=watched())
  return peak[0]


def test_device_memory_of_the_pass_does_not_grow_with_the_number_of_examples(mesh4, tmp_path):
  """Old behaviour caught: every batch's outputs stayed on the devices, replicated, until the pass ended, so
  the live device bytes grew with N (about N * (C + D) * 4 bytes per device). Here the bytes held during a pass
  over 640 examples must be those of a pass over 64, and far below what the old code held."""
  det = _detector(mesh4, 640)
  params = det.init_state(jax.random.key(0))["params"]
  small = _peak_live_bytes_of_pass(det, params, 64, tmp_path / "small")
  large = _peak_live_bytes_of_pass(det, params, 640, tmp_path / "large")
  d = det.model.config.embed_dim
  old_code_holds = 640 * (C + d) * 4 * 4  # every row, replicated on 4 devices
  assert large <= small + 4096, (small, large)
  assert large < old_code_holds / 10, (large, old_code_holds)


def test_parts_of_several_processes_are_merged_into_whole_files(tmp_path):
  """Old behaviour caught: each process held every row; now each writes only the rows it scored, and process 0
  merges the parts (here two writers stand for two processes) into files equal to one process's."""
  n, rng = 300, np.random.default_rng(0)
  rows = rng.normal(size=(n, 7)).astype(np.float32)
  order = rng.permutation(n)
  writers = []
  for pid, mine in enumerate(np.array_split(order, 2)):
    w = scoring.RowFiles(tmp_path, n)
    w.pid, w.count = pid, 2
    for chunk in np.array_split(mine, 5):
      w.write(chunk, {"embedding": rows[chunk]})
    writers.append(w)
  writers[1]._merge_parts(writers[1]._close())  # process 1 finishes first and leaves the merge to process 0
  out = writers[0].finish()
  np.testing.assert_array_equal(out["embedding"], rows)
  np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), rows)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]


def test_auto_pred_probs_is_full_up_to_the_size_limit_and_topk_above(monkeypatch):
  """Old behaviour caught: a 21k-class run would have written a 107 GB pred_probs.npy."""
  c = tiny_config()
  assert detect_train.pred_probs_mode(c, 1_281_167, 1_000) == "full"  # ImageNet-1k: 5.1 GB
  assert detect_train.pred_probs_mode(c, 1_281_167, 21_841) == "topk"  # ImageNet-21k: 112 GB
  c.report.pred_probs = "none"
  assert detect_train.pred_probs_mode(c, 10, 10) == "none"
