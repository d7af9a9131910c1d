"""On-device selection metrics (deft_jax.report.clu_metrics) agree with the NumPy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deft_jax.report import metrics as M
from deft_jax.report.clu_metrics import DetectionMetrics, SelectionCounts


def _random_epoch(seed, n=203, batch=32, num_classes=7):
  """Batches of a noisy dataset with the last batch padded (mask False, label 0, clean_label -1)."""
  rng = np.random.default_rng(seed)
  given = rng.integers(0, num_classes, n).astype(np.int32)
  truth = np.where(rng.random(n) < 0.7, given, rng.integers(0, num_classes, n)).astype(np.int32)
  truth[rng.random(n) < 0.1] = -1
  selected = rng.random(n) < 0.6
  pad = -n % batch
  arrays = dict(
      is_clean_pred=np.concatenate([selected, np.ones(pad, bool)]),  # padding "selected" on purpose
      label=np.concatenate([given, np.zeros(pad, np.int32)]),
      clean_label=np.concatenate([truth, np.full(pad, -1, np.int32)]),
      mask=np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]))
  batches = [{k: v[i:i + batch] for k, v in arrays.items()} for i in range(0, n + pad, batch)]
  return batches, M.detection_metrics(selected, given, truth)


@jax.jit
def _update(batch):
  return DetectionMetrics.single_from_model_output(**batch)


def test_merged_batches_match_numpy_metrics_including_padding():
  batches, expected = _random_epoch(0)
  running = None
  for b in batches:
    update = _update(b)
    running = update if running is None else running.merge(update)
  got = {k: float(v) for k, v in running.compute().items()}
  for key in ("precision", "recall", "f1", "selected_fraction", "estimated_noise_rate", "true_noise_rate"):
    assert got[key] == pytest.approx(expected[key], rel=1e-6), key


def test_merging_from_empty_is_a_no_op_and_counts_are_exact():
  batches, expected = _random_epoch(1)
  total = SelectionCounts.empty()
  for b in batches:
    total = total.merge(SelectionCounts.from_model_output(**{k: jnp.asarray(v) for k, v in b.items()}))
  assert int(total.valid) == expected["count"]
  assert int(total.selected) == expected["selected"]
  assert int(total.true_positive) == expected["true_positive"]
  assert int(total.truly_clean) == expected["truly_clean"]


def test_metrics_are_nan_without_ground_truth_and_zero_precision_without_selection():
  n = 16
  no_truth = _update(dict(is_clean_pred=np.ones(n, bool), label=np.zeros(n, np.int32),
                          clean_label=np.full(n, -1, np.int32), mask=np.ones(n, bool))).compute()
  assert math.isnan(float(no_truth["precision"])) and math.isnan(float(no_truth["f1"]))
  assert float(no_truth["selected_fraction"]) == 1.0
  nothing = _update(dict(is_clean_pred=np.zeros(n, bool), label=np.zeros(n, np.int32),
                         clean_label=np.zeros(n, np.int32), mask=np.ones(n, bool))).compute()
  assert float(nothing["precision"]) == 0.0 and float(nothing["recall"]) == 0.0
  assert float(nothing["f1"]) == 0.0


def test_sharded_global_batch_gives_the_same_counts():
  devices = np.array(jax.devices())
  mesh = Mesh(devices, ("data",))
  batches, _ = _random_epoch(2, n=64 * len(devices) - 5, batch=64 * len(devices))
  (batch,) = batches
  sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
  got = _update(sharded).compute()
  want = _update(batch).compute()
  for key in want:
    np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-6)


def test_from_model_output_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="equal length"):
    SelectionCounts.from_model_output(is_clean_pred=jnp.ones(4, bool), label=jnp.zeros(3, jnp.int32),
                                      clean_label=jnp.zeros(3, jnp.int32))
