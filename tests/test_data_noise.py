"""Label-noise generators: rates, determinism, class maps, Xia et al. instance-dependent noise."""

import numpy as np
import pytest
from scipy import special

from deft_jax.data import cifar_offline, noise
from deft_jax.data.errors import DataError, LabelRangeError

N = 50_000


@pytest.fixture(scope="module")
def labels10():
  return np.random.default_rng(0).integers(0, 10, N)


@pytest.fixture(scope="module")
def labels100():
  return np.repeat(np.arange(100), N // 100)


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_symmetric_another_class_realised_rate_within_one_point(labels10, ratio):
  noisy, report = noise.symmetric_noise(labels10, 10, ratio, seed=1, another_class=True)
  realised = np.mean(noisy != labels10)
  assert abs(realised - ratio) < 0.01
  assert report.realised_rate == pytest.approx(realised)


@pytest.mark.parametrize("num_classes,ratio", [(10, 0.5), (100, 0.2), (100, 0.5)])
def test_symmetric_any_class_realises_ratio_times_one_minus_one_over_c(num_classes, ratio):
  labels = np.arange(N) % num_classes
  noisy, report = noise.symmetric_noise(labels, num_classes, ratio, seed=2)
  assert abs(report.realised_rate - ratio * (1 - 1 / num_classes)) < 0.01
  if num_classes == 100:  # and within one point of the request itself
    assert abs(report.realised_rate - ratio) < 0.01
  # Uniform: every off-diagonal transition cell is about ratio / C.
  off = report.transition[~np.eye(num_classes, dtype=bool)]
  assert abs(off.mean() - ratio / num_classes) < 0.002


def test_same_seed_gives_same_labels_and_another_seed_does_not(labels10):
  a, _ = noise.symmetric_noise(labels10, 10, 0.4, seed=5)
  b, _ = noise.symmetric_noise(labels10, 10, 0.4, seed=5)
  c, _ = noise.symmetric_noise(labels10, 10, 0.4, seed=6)
  np.testing.assert_array_equal(a, b)
  assert np.mean(a != c) > 0.3


@pytest.mark.parametrize("ratio", [0.2, 0.45])
def test_pair_noise_follows_next_class_map_at_the_requested_rate(labels100, ratio):
  noisy, report = noise.pair_noise(labels100, 100, ratio, seed=3)
  assert abs(report.realised_rate - ratio) < 0.01
  flipped = noisy != labels100
  np.testing.assert_array_equal(noisy[flipped], (labels100[flipped] + 1) % 100)
  # The transition matrix has mass only on the diagonal and the map.
  t = report.transition
  assert np.allclose(np.diag(t) + t[np.arange(100), (np.arange(100) + 1) % 100], 1.0)


def test_cifar10_asymmetric_map_only_moves_the_classic_pairs(labels10):
  noisy, report = noise.pair_noise(labels10, 10, 0.4, seed=4, class_map="cifar10")
  moved = {(int(a), int(b)) for a, b in zip(labels10, noisy) if a != b}
  assert moved == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
  # Classes 0, 1, 6, 7, 8 never change, so half the classes carry all the noise.
  assert np.allclose(np.diag(report.transition)[[0, 1, 6, 7, 8]], 1.0)
  assert abs(report.transition[3, 5] - 0.4) < 0.03


def _xia_reference(labels, images, c, ratio, seed, std=0.1):
  """Xia et al.'s recipe written plainly: one (C, d, C) draw, one sample at a time."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  n = len(labels)
  q = stats.truncnorm.rvs(-ratio / std, (1 - ratio) / std, loc=ratio, scale=std, size=n,
                          random_state=rng)
  x = images.transpose(0, 3, 1, 2).reshape(n, -1).astype(np.float64)
  w = rng.standard_normal((c, x.shape[1], c))
  probs = []
  for i in range(n):
    a = x[i] @ w[labels[i]]
    a[labels[i]] = -np.inf
    p = q[i] * special.softmax(a)
    p[labels[i]] += 1 - q[i]
    probs.append(p)
  u = rng.random(n)
  return np.array([np.searchsorted(np.cumsum(p), ui * p.sum(), side="right")
                   for p, ui in zip(probs, u)])


def test_instance_noise_matches_a_plain_implementation_of_xia_et_al():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
  labels = rng.integers(0, 5, 300)
  ours, _ = noise.instance_noise(labels, images, 5, 0.4, seed=1)
  np.testing.assert_array_equal(ours, _xia_reference(labels, images, 5, 0.4, seed=1))


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.4])
def test_instance_noise_realised_rate_within_one_point(labels10, ratio):
  # Raw pixels of 50k images (random ones: the rate does not depend on content).
  images = np.random.default_rng(1).integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
  noisy, report = noise.instance_noise(labels10, images, 10, ratio, seed=1)
  assert abs(report.realised_rate - ratio) < 0.01
  again, _ = noise.instance_noise(labels10, images, 10, ratio, seed=1)
  np.testing.assert_array_equal(noisy, again)


@pytest.fixture(scope="module")
def cifar_images():
  split = cifar_offline.load_demo(label_set="clean_label")["train"]
  return split.clean_labels, split.load_images(np.arange(split.num_examples))


def test_instance_noise_flips_concentrate_per_class_and_differ_per_sample(cifar_images):
  clean, images = cifar_images
  noisy, report = noise.instance_noise(clean, images, 10, 0.4, seed=1)
  assert abs(report.realised_rate - 0.4) < 0.03  # 4,000 real images
  off = report.counts.astype(float)
  np.fill_diagonal(off, 0)
  top_share = off.max(1) / off.sum(1)
  # Symmetric noise would give each wrong class ~1/9 of a class's flips; here
  # the logits x W[y] depend on the image, so one or two classes dominate.
  assert top_share.mean() > 0.4
  # ... but not one class only (that would be pair noise): targets differ per sample.
  assert ((off > 0).sum(1) >= 2).sum() >= 8
  # Per-sample flip rates differ: the images of a class are not all flipped alike.
  sym, sym_report = noise.symmetric_noise(clean, 10, 0.4, seed=1, another_class=True)
  sym_off = sym_report.counts.astype(float)
  np.fill_diagonal(sym_off, 0)
  assert (sym_off.max(1) / sym_off.sum(1)).mean() < 0.2


def test_noise_rejects_labels_outside_range():
  with pytest.raises(LabelRangeError, match="label 10 at position 2"):
    noise.symmetric_noise(np.array([0, 1, 10]), 10, 0.2, seed=0)
  with pytest.raises(ValueError, match="ratio"):
    noise.symmetric_noise(np.array([0, 1]), 10, 1.5, seed=0)


def test_noisy_labels_round_trip_and_refuse_another_dataset(tmp_path, labels10):
  noisy, report = noise.symmetric_noise(labels10, 10, 0.3, seed=9)
  ids = np.array([f"img{i}" for i in range(N)])
  path = noise.save_noisy_labels(tmp_path / "noisy.npz", noisy, report, clean_labels=labels10,
                                 ids=ids)
  with np.load(path, allow_pickle=False) as z:  # no pickle needed to read it
    assert z["noisy_labels"].dtype == np.int32
  loaded, rep2 = noise.load_noisy_labels(path, clean_labels=labels10, ids=ids)
  np.testing.assert_array_equal(loaded, noisy)
  assert rep2.kind == "sym" and rep2.realised_rate == pytest.approx(report.realised_rate)
  np.testing.assert_allclose(rep2.transition, report.transition)
  other = labels10.copy()
  other[7] = (other[7] + 1) % 10
  with pytest.raises(DataError, match="first difference at 7"):
    noise.load_noisy_labels(path, clean_labels=other)
  with pytest.raises(DataError, match="ids differ"):
    noise.load_noisy_labels(path, ids=ids[::-1])
