"""Report figures (deft_jax.report.plots): content checks that do not depend on fonts."""

import numpy as np
import pytest

from deft_jax.report import label_issues_table, plots, suspects_grid_array

NAMES = ["airplane", "automobile", "bird"]


def _table(n=10):
  rng = np.random.default_rng(0)
  p = rng.random(n).astype(np.float32)
  det = dict(p_clean=p, is_clean=p > 0.5, suggested=rng.integers(0, 3, n).astype(np.int32))
  return label_issues_table(det, given=rng.integers(0, 3, n).astype(np.int32), class_names=NAMES)


def _solid_images(indices):
  """Example i is a solid 32x32 image of gray level 10 * i, so the grid shows which were fetched."""
  return np.repeat((10 * np.asarray(indices)).astype(np.uint8)[:, None, None, None], 32 * 32 * 3,
                   axis=1).reshape(len(indices), 32, 32, 3)


def test_upsample_nearest_repeats_pixels_without_blending():
  img = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1x2
  up = plots.upsample_nearest(img, min_side=4)
  assert up.shape == (4, 8, 3)
  assert set(np.unique(up)) == {0, 255}
  assert (up[:, :4] == 0).all() and (up[:, 4:] == 255).all()
  big = np.zeros((128, 128, 3), np.uint8)
  assert plots.upsample_nearest(big) is big


def test_suspects_grid_fetches_the_most_suspect_rows_in_rank_order():
  table = _table()
  asked = []

  def image_fn(indices):
    asked.append(list(indices))
    return _solid_images(indices)

  grid = suspects_grid_array(table, image_fn, num=4, cols=2)
  assert asked == [table["index"].tolist()[:4]]
  assert grid.dtype == np.uint8 and grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
  # each fetched gray level fills a whole thumbnail; other levels appear at most in text anti-aliasing
  colours, counts = np.unique(grid[0].reshape(-1, 3), axis=0, return_counts=True)
  area = {tuple(c): n for c, n in zip(colours.tolist(), counts)}
  for i in asked[0]:
    assert area.get((10 * i,) * 3, 0) > 2000, i
  for i in set(range(10)) - set(asked[0]) - {0}:
    assert area.get((10 * i,) * 3, 0) < 500, i


def test_plots_skip_the_grid_without_images():
  assert plots.suspects_figure(_table(), None) is None
  assert suspects_grid_array(_table(), None) is None


def test_image_fn_contract_is_checked():
  with pytest.raises(ValueError, match="uint8"):
    plots.suspects_figure(_table(), lambda idx: np.zeros((len(idx), 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[k, H, W, 3\] for k = 3"):
    plots.suspects_figure(_table(), lambda idx: np.zeros((2, 8, 8, 3), np.uint8), num=3)
  gray = plots.fetch_images(lambda idx: np.full((len(idx), 4, 4), 7, np.uint8), np.arange(2))
  assert gray.shape == (2, 4, 4, 3) and (gray == 7).all()


def test_histogram_splits_by_ground_truth_into_clean_and_noisy_bars():
  p = np.array([0.1, 0.15, 0.9, 0.95, 0.97])
  truly_clean = np.array([False, False, True, True, True])
  fig = plots.p_clean_histogram(p, truly_clean, bins=10)
  ax = fig.axes[0]
  heights = [patch.get_height() for patch in ax.patches]
  assert sum(heights) == pytest.approx(5)  # stacked bars hold every example exactly once
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["truly clean", "truly noisy"]
  assert plots.figure_to_array(fig).dtype == np.uint8


def test_class_noise_chart_lists_noisiest_classes_first_and_caps_count():
  per_class = [{"label": k, "name": f"c{k}", "count": 10, "estimated_noise_rate": k / 100} for k in range(50)]
  per_class.append({"label": 50, "name": "empty", "count": 0, "estimated_noise_rate": None})
  fig = plots.class_noise_figure(per_class, max_classes=5)
  labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
  assert labels == ["c49", "c48", "c47", "c46", "c45"]
  assert plots.class_noise_figure([{"label": 0, "name": "x", "count": 0, "estimated_noise_rate": None}]) is None
