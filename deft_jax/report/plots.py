"""Report figures: the most suspect samples, the label-score histogram, per-class noise.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: no global backend switch, no figure registry that leaks memory in long jobs, and safe
to call from a training loop's background thread.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deft_jax.report.inputs import ReportInputError

ImageFn = Callable[[np.ndarray], np.ndarray]  # int indices [k] -> uint8 [k, H, W, 3]

_MIN_SIDE = 96  # tiny images (CIFAR 32x32) are blown up to at least this many pixels


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = None) -> Figure:
  fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
  FigureCanvasAgg(fig)
  return fig


def figure_to_array(fig: Figure) -> np.ndarray:
  """Renders ``fig`` to uint8 [H, W, 3]."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def fetch_images(image_fn: ImageFn, indices: np.ndarray) -> np.ndarray:
  """Calls ``image_fn`` and checks it kept its side of the contract (uint8 [k, H, W, 3])."""
  images = np.asarray(image_fn(np.asarray(indices, np.int64)))
  if images.dtype != np.uint8:
    raise ReportInputError(f"image_fn must return uint8 images, got dtype {images.dtype}")
  if images.ndim == 3:  # grayscale [k, H, W]
    images = images[..., None]
  if images.ndim != 4 or images.shape[0] != len(indices) or images.shape[-1] not in (1, 3):
    raise ReportInputError(
        f"image_fn must return [k, H, W, 3] for k = {len(indices)} indices, got shape {images.shape}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def upsample_nearest(image: np.ndarray, min_side: int = _MIN_SIDE) -> np.ndarray:
  """Integer nearest-neighbour upsampling so the short side reaches ``min_side`` (pixels stay
  crisp; a smoothed 32x32 thumbnail hides exactly the details a reviewer needs)."""
  factor = -(-min_side // max(1, min(image.shape[:2])))
  if factor <= 1:
    return image
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def suspects_figure(table: pd.DataFrame, image_fn: ImageFn | None, *, num: int = 24,
                    cols: int = 6) -> Figure | None:
  """A grid of the ``num`` most suspect samples (the table's first rows), captioned
  "given / suggested / score". None when there are no images or no rows."""
  if image_fn is None or len(table) == 0 or num <= 0:
    return None
  rows_df = table.head(num)
  images = fetch_images(image_fn, rows_df["index"].to_numpy())
  cols = min(cols, len(rows_df))
  rows = -(-len(rows_df) // cols)
  fig = new_figure(1.9 * cols, 2.4 * rows, layout="constrained")
  for i, (image, rec) in enumerate(zip(images, rows_df.to_dict("records"))):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.imshow(upsample_nearest(image), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"#{rec['index']}  score {rec['label_score']:.3f}\ngiven: {_short(rec['given_name'])}\n"
                 f"suggested: {_short(rec['predicted_name'])}",
                 fontsize=7, color="firebrick" if rec["is_label_issue"] else "black")
  return fig


def suspects_grid_array(table: pd.DataFrame, image_fn: ImageFn | None, *, num: int = 16,
                        cols: int = 4) -> np.ndarray | None:
  """The suspects grid as uint8 [1, H, W, 3] (for TensorBoard image summaries); None without images."""
  fig = suspects_figure(table, image_fn, num=num, cols=cols)
  return None if fig is None else figure_to_array(fig)[None]


def p_clean_histogram(p_clean, truly_clean=None, known=None, *, bins: int = 40) -> Figure:
  """Histogram of label scores; split into truly clean / truly noisy when ground truth is given
  (``truly_clean`` bool [N], ``known`` bool [N] marks where the truth is available)."""
  p_clean = np.asarray(p_clean, np.float64)
  fig = new_figure(6.4, 3.6)
  ax = fig.add_subplot(1, 1, 1)
  edges = np.linspace(0.0, 1.0, bins + 1)
  if truly_clean is None:
    ax.hist(p_clean, bins=edges, color="tab:blue")
  else:
    truly_clean = np.asarray(truly_clean, bool)
    known = np.ones_like(truly_clean) if known is None else np.asarray(known, bool)
    ax.hist([p_clean[known & truly_clean], p_clean[known & ~truly_clean]], bins=edges,
            stacked=True, color=["tab:green", "tab:red"], label=["truly clean", "truly noisy"])
    ax.legend(loc="upper center")
  ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
  ax.set_xlabel("label score p_clean (low = likely wrong)")
  ax.set_ylabel("examples")
  ax.set_title(f"Label scores of {len(p_clean):,} examples")
  fig.tight_layout()
  return fig


def class_noise_figure(per_class: Sequence[Mapping], *, max_classes: int = 30) -> Figure | None:
  """Horizontal bars of estimated (and, when present, true) noise for the noisiest classes.

  ``per_class`` is ``summary["per_class"]``; classes without examples are left out.
  """
  rows = [r for r in per_class if r["count"]]
  if not rows:
    return None
  rows = sorted(rows, key=lambda r: (-(r["estimated_noise_rate"] or 0.0), r["label"]))[:max_classes]
  names = [_short(r["name"], 24) for r in rows]
  est = np.array([r["estimated_noise_rate"] or 0.0 for r in rows])
  y = np.arange(len(rows))
  fig = new_figure(6.4, 1.2 + 0.22 * len(rows))
  ax = fig.add_subplot(1, 1, 1)
  has_truth = all("true_noise_rate" in r for r in rows)
  height = 0.4 if has_truth else 0.8
  ax.barh(y - (height / 2 if has_truth else 0), est, height=height, color="tab:orange", label="estimated")
  if has_truth:
    true = np.array([r["true_noise_rate"] or 0.0 for r in rows])
    ax.barh(y + height / 2, true, height=height, color="tab:gray", label="true")
    ax.legend(loc="lower right")
  ax.set_yticks(y, names, fontsize=7)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("noise rate")
  total = sum(1 for r in per_class if r["count"])
  ax.set_title(f"Noise by class ({len(rows)} noisiest of {total})")
  fig.tight_layout()
  return fig


def _short(name: str, width: int = 22) -> str:
  """Cuts the middle, not the end: long names (car models, bird species) differ at the end."""
  name = str(name)
  if len(name) <= width:
    return name
  head = (width - 1) // 2
  return name[:head] + "~" + name[len(name) - (width - 1 - head):]
