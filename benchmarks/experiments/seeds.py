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
