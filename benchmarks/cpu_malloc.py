"""XLA:CPU train-step time under each of deft_jax.cpu_memory's malloc settings (DEFT_JAX_CPU_MALLOC).

Each setting runs in a fresh process (the setting must precede the backend's threads; "hugepages" starts the
process with glibc's hugetlb tunable, as python -m deft_jax.main restarts itself with it): a CLIP image-tower
train step (AdamW, mean-square loss of the image features) on random images, timed after one warm-up call;
reports s/step (median), minor page faults per step, system CPU seconds and peak resident size. Prints one
JSON line per setting.

  PYTHONPATH=. python benchmarks/cpu_malloc.py --preset tiny_32px --batch 256 --steps 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from deft_jax import cpu_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, resource, statistics, sys
from benchmarks import common
from deft_jax import cpu_memory
kept = cpu_memory.configure()
import jax, jax.numpy as jnp, numpy as np, optax
from deft_jax.models import clip as clip_lib, presets
preset, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = presets.get_preset(preset)
model = clip_lib.CLIP(cfg)
params = clip_lib.init_params(model, jax.random.key(0))
tx = optax.adamw(1e-3)
opt = tx.init(params)

def loss_fn(p, x):
  return jnp.mean(model.apply({"params": p}, x, method=clip_lib.CLIP.encode_image) ** 2)

@jax.jit
def step(p, o, x):
  loss, g = jax.value_and_grad(loss_fn)(p, x)
  u, o = tx.update(g, o, p)
  return optax.apply_updates(p, u), o, loss

size = cfg.vision.image_size
x = np.random.default_rng(0).random((batch, size, size, 3), np.float32)
params, opt, loss = step(params, opt, x)
loss.block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF)

def one_step():
  global params, opt
  params, opt, loss = step(params, opt, x)
  return loss

times, _ = common.time_steps(one_step, jax.block_until_ready, warmup=0, iters=steps)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"in_effect": kept, "s_per_step": statistics.median(times),
                  "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
                  "max_rss_mb": r1.ru_maxrss // 1024}))
"""


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="tiny_32px")
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--steps", type=int, default=15)
  ap.add_argument("--settings", default="off,kept,hugepages")
  args = ap.parse_args()
  for setting in args.settings.split(","):
    env = {**os.environ, "DEFT_JAX_CPU_MALLOC": setting, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GLIBC_TUNABLES", None)
    if setting == "hugepages":
      env["GLIBC_TUNABLES"] = cpu_memory.HUGETLB
    out = subprocess.run([sys.executable, "-c", CHILD, args.preset, str(args.batch), str(args.steps)],
                         env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({"setting": setting, "preset": args.preset, "batch": args.batch, **row}), flush=True)


if __name__ == "__main__":
  main()
