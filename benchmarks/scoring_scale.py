"""The scoring pass and the report at ImageNet scale, simulated: wall time, peak host RSS and the device bytes
the pass holds, per stage, for N examples and C classes.

  PYTHONPATH=. python benchmarks/scoring_scale.py --n 100000 --classes 1000 [--batch 256] [--out results.jsonl]
  PYTHONPATH=. python benchmarks/scoring_scale.py --out results.jsonl --plot docs/scoring_scale.png

The product's own code runs: ``detect.train.score_split`` on a DEFT detector of the tiny preset (random
weights), then ``report.build_and_write_report`` with the exports, as ``run.py`` calls them. Only the reader is
synthetic: ``pipeline.eval_batches`` is replaced by batches of random images that are never decoded (a few
buffers, cycled), so the figures are those of the pass and the report, not of JPEG decoding. The same script
runs against an older checkout (``PYTHONPATH=<checkout> python <this file>``: it finds which scoring API that
checkout has), which is how the "before" rows were measured.

Per stage: wall seconds, the peak resident set of the process during the stage (VmHWM, reset before each stage
through /proc/self/clear_refs), and for the pass the peak bytes of live JAX arrays (the devices are the CPU
here; ``memory_stats()`` of a CPU device says nothing) sampled before each batch. Rows are appended as JSON.
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
import types
from pathlib import Path

import jax
import numpy as np

from deft_jax import config_lib, parallel
from deft_jax.data import pipeline
from deft_jax.detect import detector as detector_lib
from deft_jax.detect import train as detect_train
from deft_jax.report import build_and_write_report


def _peak_rss_reset() -> None:
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS


def _peak_rss_bytes() -> int:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) * 1024
  return 0


def _live_bytes() -> int:
  return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())


def _config(classes: int, batch: int):
  c = config_lib.base_config()
  c.model.preset, c.model.checkpoint = "tiny", ""
  c.data.image_size = 32
  c.detect.update(dict(epochs=1, batch_size=batch, eval_batch_size=batch, n_ctx=4))
  c.report.review_top_k = 1000
  return c


def _synthetic_batches(n: int, classes: int, batch: int, peak: list):
  """Eval batches of random (never decoded) images in the eval order; samples the live device bytes."""
  rng = np.random.default_rng(0)
  images = [rng.normal(size=(batch, 32, 32, 3)).astype(np.float32) for _ in range(4)]
  base = _live_bytes()
  for i, start in enumerate(range(0, n, batch)):
    peak[0] = max(peak[0], _live_bytes() - base)
    idx = np.arange(start, start + batch)
    yield {"image": images[i % 4], "index": np.where(idx < n, idx, 0).astype(np.int32),
           "label": (idx * 7919 % classes).astype(np.int32), "clean_label": np.full(batch, -1, np.int32),
           "mask": idx < n}


def _stage(rows: list, name: str, fn):
  _peak_rss_reset()
  t0 = time.perf_counter()
  out = fn()
  rows.append({"stage": name, "seconds": round(time.perf_counter() - t0, 2), "peak_rss_bytes": _peak_rss_bytes()})
  return out


def _score(det, params, split, batch: int, workdir: Path, peak: list) -> tuple[dict, dict]:
  """The detect stage's pass and its export, as each version's ``detect.train.run`` does it."""
  pipeline.eval_batches = lambda *a, **k: _synthetic_batches(split.num_examples, len(split.class_names), batch,
                                                              peak)
  kw = dict(batch_size=batch, data_kw={}, with_embedding=True)
  streaming = "directory" in inspect.signature(detect_train.score_split).parameters
  if streaming:
    scored = detect_train.score_split(det, params, split, directory=workdir, pred_probs="full", **kw)
    files = {"pred_probs.npy": workdir / "pred_probs.npy", "features.npy": workdir / "features.npy"}
  else:  # the old pass: every output in memory, then saved (checkpoint.save_npy)
    scored = detect_train.score_split(det, params, split, **kw)
    files = {}
    for key, name in (("pred_probs", "pred_probs.npy"), ("embedding", "features.npy")):
      np.save(workdir / name, np.asarray(scored.pop(key), np.float32))
      files[name] = np.load(workdir / name, mmap_mode="r")  # what the old run.py handed to the report
  detection = {k: np.asarray(scored[k]) for k in ("p_clean", "is_clean", "suggested", "margin")}
  detection["label_score"] = detect_train.label_score(detection["margin"], 100.0)
  detection["score"] = detection["margin"]
  return detection, files


def run(n: int, classes: int, batch: int, workdir: Path) -> dict:
  # Each pass jits its functions anew; the warm-up's compilations are found again in this cache, so that the
  # timed pass measures scoring, not XLA.
  jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  config = _config(classes, batch)
  mesh = parallel.make_mesh()
  names = [f"class {i}" for i in range(classes)]
  split = types.SimpleNamespace(num_examples=n, class_names=names)
  det = detector_lib.Detector(config, class_names=names, num_examples=n, mesh=mesh, checkpoint=None,
                              steps_per_epoch=1)
  params = det.init_state(jax.random.key(0))["params"]
  rows: list = []
  warm = max(batch, 2 * batch)  # compile outside the timed pass
  _score(det, params, types.SimpleNamespace(num_examples=warm, class_names=names), batch, workdir, [0])
  peak = [0]
  detection, files = _stage(rows, "scoring pass", lambda: _score(det, params, split, batch, workdir, peak))
  rows[-1]["images_per_s"] = round(n / rows[-1]["seconds"], 1)
  rows[-1]["peak_device_bytes"] = peak[0]
  given = (np.arange(n) * 7919 % classes).astype(np.int32)
  _stage(rows, "report", lambda: build_and_write_report(workdir / "report", detection, given=given,
                                                        class_names=names, arrays=files, review_top_k=1000))
  return {"n": n, "classes": classes, "batch": batch, "devices": len(jax.devices()),
          "streaming": "directory" in inspect.signature(detect_train.score_split).parameters, "stages": rows}


def plot(results: list[dict], path: str) -> None:
  """Log-log: per stage wall seconds (left) and memory (right: the pass's peak host RSS and device bytes)
  against N, before and after."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for label, style in (("before", "--o"), ("after", "-s")):
    rows = sorted((r for r in results if r["label"] == label), key=lambda r: r["n"])
    if not rows:
      continue
    n = [r["n"] for r in rows]
    for i, stage in enumerate(("scoring pass", "report")):
      sec = [next(s["seconds"] for s in r["stages"] if s["stage"] == stage) for r in rows]
      left.loglog(n, sec, style, color=f"C{i}", label=f"{stage}, {label}")
    passes = [r["stages"][0] for r in rows]
    right.loglog(n, [p["peak_rss_bytes"] / 2**30 for p in passes], style, color="C2",
                 label=f"host peak RSS of the pass, {label}")
    right.loglog(n, [max(p["peak_device_bytes"], 1) / 2**30 for p in passes], style, color="C3",
                 label=f"device bytes held by the pass, {label}")
  left.set(xlabel="examples N (C = 1,000 classes)", ylabel="wall seconds", title="time per stage")
  right.set(xlabel="examples N (C = 1,000 classes)", ylabel="GiB", title="memory of the scoring pass")
  for ax in (left, right):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--n", type=int, default=10_000)
  ap.add_argument("--classes", type=int, default=1000)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--label", default="", help="a name for the code measured (e.g. before / after)")
  ap.add_argument("--out", default="", help="append the result as one JSON line to this file")
  ap.add_argument("--workdir", default="", help="where the files go (default: a temporary directory)")
  ap.add_argument("--plot", default="", help="draw the rows of --out (JSON lines) into this PNG and stop")
  a = ap.parse_args()
  if a.plot:
    plot([json.loads(line) for line in Path(a.out).read_text().splitlines() if line.strip()], a.plot)
    return
  with tempfile.TemporaryDirectory(dir=a.workdir or None) as tmp:
    result = {"label": a.label, **run(a.n, a.classes, a.batch, Path(tmp))}
  print(json.dumps(result))
  if a.out:
    with open(a.out, "a") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  main()
