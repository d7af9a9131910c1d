"""review.html: one self-contained page (no server, no network) where a person goes through the top suspects and
decides per image: relabel (to the suggested class or another), keep the given label, or drop the image.

The page embeds its data as JSON and each thumbnail (at most 96 px) as a JPEG data URI; a thumbnail that cannot
be read (a file removed or damaged since the run) becomes a placeholder tile. Decisions survive a reload (the
browser's localStorage, keyed by the run), and "export" saves ``corrections.csv`` (index, id, given_label,
new_label, action), which ``--config.data.corrections=<csv>`` applies to the next run (data/corrections.py).
The run writes the page into its report; ``deft_jax.api.review`` writes it from a notebook's table.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from deft_jax.report import review_page
from deft_jax.report.inputs import ReportInputError

FILE = "review.html"
THUMB_PX = 96
DEFAULT_TOP_K = 1000
ImageFn = Callable[[np.ndarray], np.ndarray]  # indices -> uint8 [k, H, W, 3]
_CHUNK = 64


def thumbnail_uri(image, px: int = THUMB_PX) -> str | None:
  """A uint8 [H, W, 3] (or [H, W]) image as a JPEG data URI of at most ``px`` per side; None if it is not one."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.size == 0:
      return None
    if arr.dtype != np.uint8:
      arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr).convert("RGB")
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
  except (ValueError, TypeError, OSError):
    return None
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(indices: Sequence[int], image_fn: ImageFn | None, px: int = THUMB_PX) -> list[str | None]:
  """One data URI (or None) per index: ``image_fn`` in chunks, one index at a time in a chunk that fails, so that
  one unreadable image costs only its own tile."""
  indices = np.asarray(indices, np.int64)
  if image_fn is None:
    return [None] * len(indices)
  out: list[str | None] = []
  failed = 0
  for start in range(0, len(indices), _CHUNK):
    chunk = indices[start:start + _CHUNK]
    try:
      out += [thumbnail_uri(im, px) for im in image_fn(chunk)]
      continue
    except Exception:  # pylint: disable=broad-except  (any reader's error: the page must still be written)
      pass
    for i in chunk:
      try:
        out.append(thumbnail_uri(image_fn(np.asarray([i]))[0], px))
      except Exception:  # pylint: disable=broad-except
        out.append(None)
        failed += 1
  if failed:
    logging.warning("review page: %d of %d thumbnails could not be read; they show a placeholder", failed,
                    len(indices))
  return out


def class_names_from_table(table: pd.DataFrame) -> list[str]:
  """Class names recovered from a table's (label, name) columns; a label no row names becomes "class <k>"."""
  names: dict[int, str] = {}
  for label, name in (("given_label", "given_name"), ("predicted_label", "predicted_name"),
                      ("true_label", "true_name")):
    if label in table and name in table:
      for k, n in zip(table[label].to_numpy(), table[name].to_numpy()):
        if int(k) >= 0:
          names.setdefault(int(k), str(n))
  c = max(names) + 1 if names else 0
  return [names.get(k, f"class {k}") for k in range(c)]


def confused_pairs(table: pd.DataFrame) -> list[dict]:
  """(given, suggested, count) over the flagged rows whose suggestion differs, most frequent first: the health
  summary's ``confused_pairs``, without its cut."""
  flagged = table[table["is_label_issue"].to_numpy(bool)
                  & (table["predicted_label"].to_numpy() != table["given_label"].to_numpy())]
  counts = flagged.groupby(["given_label", "predicted_label"]).size().reset_index(name="n")
  counts = counts.sort_values(["n", "given_label", "predicted_label"], ascending=[False, True, True])
  return [{"g": int(g), "s": int(s), "n": int(n)} for g, s, n in counts.itertuples(index=False)]


def run_key(rows: pd.DataFrame, class_names: Sequence[str], title: str) -> str:
  """Which run a page belongs to (its decisions' storage key): a hash of its rows' index, id and given label."""
  h = hashlib.sha256(json.dumps([title, list(class_names)]).encode())
  for col in ("index", "id", "given_label"):
    h.update(np.asarray(rows[col].astype(str)).astype("U").tobytes())
  return h.hexdigest()[:16]


_REQUIRED = ("index", "given_label", "predicted_label", "label_score", "p_clean", "is_label_issue")


def page_html(table: pd.DataFrame, *, image_fn: ImageFn | None = None, class_names: Sequence[str] | None = None,
              top_k: int = DEFAULT_TOP_K, title: str | None = None) -> str:
  """The page for the ``top_k`` first rows of a ranked label-issues table (all rows when there are fewer)."""
  missing = [c for c in _REQUIRED if c not in table]
  if missing:
    raise ReportInputError(f"the table lacks {missing}: pass the DataFrame of find_label_issues / label_issues.csv")
  if top_k < 1:
    raise ReportInputError(f"review_top_k must be at least 1, got {top_k}")
  names = list(class_names) if class_names is not None else class_names_from_table(table)
  for col in ("given_label", "predicted_label"):
    top = int(table[col].max()) if len(table) else -1
    if top >= len(names):
      raise ReportInputError(f"table[{col!r}] holds label {top}, but there are {len(names)} class names")
  rows = table.iloc[:top_k]
  title = title or f"deft_jax review: the {len(rows):,} most suspect of {len(table):,} labels"
  ids = rows["id"].astype(str).to_numpy() if "id" in rows else np.full(len(rows), "")
  thumbs = thumbnails(rows["index"].to_numpy(), image_fn)
  data = {
      "title": title, "run_key": run_key(rows.assign(id=ids), names, title), "class_names": names,
      "rows": [{"r": r, "i": int(i), "id": str(s), "g": int(g), "s": int(p), "ls": round(float(ls), 6),
                "pc": round(float(pc), 6), "t": t}
               for r, (i, s, g, p, ls, pc, t) in enumerate(zip(
                   rows["index"], ids, rows["given_label"], rows["predicted_label"], rows["label_score"],
                   rows["p_clean"], thumbs))],
      "pairs": confused_pairs(table),
  }
  blob = json.dumps(data, separators=(",", ":"), allow_nan=False)
  blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert inside <script>
  return review_page.TEMPLATE.format(css=review_page.CSS, body=review_page.BODY, data=blob, js=review_page.JS)


def write_review(path, table: pd.DataFrame, **kwargs) -> Path:
  """Writes :func:`page_html` to ``path`` (a file, or a directory that gets ``review.html``); returns the file."""
  path = Path(path)
  if path.is_dir():
    path = path / FILE
  path.write_text(page_html(table, **kwargs), encoding="utf-8")
  return path
