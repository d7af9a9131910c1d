"""The loop the seed-spread scripts share (real_noise_seeds.py, standin_seeds.py): run each seed's command once
(a workdir that holds ``done`` is read, not rerun), print one JSON line of comparisons per seed, then the min / max
of every comparison over the seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def deft_score(detection, ranking: str = "") -> "np.ndarray":
  """DEFT's ranking score by ``ranking`` (default: the run config's default, config_lib.base_config()), recomputed
  from a detection.npz's stored scoring-pass outputs, so a run made under another ranking reads the same as a
  rerun would: every ranking is stored there, only ``score`` depends on detect.ranking."""
  from deft_jax import config_lib  # pylint: disable=g-import-not-at-top
  from deft_jax.detect import train as detect_train  # pylint: disable=g-import-not-at-top

  ranking = ranking or config_lib.base_config().detect.ranking
  if ranking == "margin":
    return detection["margin"]
  d = dict(detection)
  detect_train.apply_ranking(d, ranking, logit_scale=1.0)  # the scale only moves label_score, not score
  return d["score"]


def run(seeds, out: Path, done: str, args_for, comparisons) -> list[dict]:
  """``args_for(seed, workdir)``: the ``deft_jax.main`` arguments of one seed; ``done``: a file, relative to the
  workdir, that a finished run has; ``comparisons(workdir)``: its figures."""
  rows = []
  for seed in seeds:
    wd = Path(out) / f"seed{seed}"
    if not (wd / done).exists():
      env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
      subprocess.run([sys.executable, "-m", "deft_jax.main", *args_for(seed, wd)], cwd=REPO, env=env, check=True)
    rows.append({"seed": seed, **comparisons(wd)})
    print(json.dumps(rows[-1]), flush=True)
  print(json.dumps({"spread": {k: [min(r[k] for r in rows), max(r[k] for r in rows)]
                               for k in rows[0] if k != "seed"}}))
  return rows
