"""CLIP image-encoder forward throughput (images/s) of deft_jax, e.g. ViT-B/16 fp32 on a CPU.

Random weights (the speed does not depend on them); ``encode_image`` (vision tower + projection) jitted,
timed after warm-up with block_until_ready, median over the timed calls. Prints one JSON line.

  PYTHONPATH=. python benchmarks/clip_forward.py --model vit_b16 --batch 4 --iters 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, flops
from deft_jax.models import clip as clip_lib
from deft_jax.models import presets


def run(model_name: str, batch: int, iters: int, warmup: int, dtype: str, attention: str) -> dict:
  config = presets.get_preset(model_name, dtype=dtype, attention=None if attention == "xla" else attention)
  model = clip_lib.CLIP(config)
  size = config.vision.image_size
  t0 = time.perf_counter()
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), method=clip_lib.CLIP.encode_image))(
      jax.random.key(0))["params"]
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32))
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, method=clip_lib.CLIP.encode_image))
  t0 = time.perf_counter()
  compiled = fwd.lower(params, images).compile()
  compile_s = time.perf_counter() - t0
  times, _ = common.time_steps(lambda: compiled(params, images), jax.block_until_ready, warmup=warmup, iters=iters)
  med = statistics.median(times)
  v = config.vision
  patches = (size // v.patch_size) ** 2
  ops, _ = flops.transformer("vision", n=batch, seq=1 + patches, width=v.width, mlp_dim=v.mlp_dim, layers=v.layers,
                             x_grad=False, weights_train=False)
  fwd_flops = flops.forward(ops) + 2.0 * batch * patches * v.patch_size ** 2 * 3 * v.width \
      + 2.0 * batch * v.width * config.embed_dim
  dev = jax.devices()[0]
  return {"benchmark": "clip_image_forward", "model": model_name, "image_size": size, "batch": batch, "dtype": dtype,
          "attention": attention, "images_per_s": batch / med, "step_time_s": med,
          "step_time_min_s": min(times), "timed_steps": len(times), "compile_s": compile_s, "init_s": init_s,
          "forward_flops": fwd_flops, "achieved_gflops": fwd_flops / med / 1e9, "device": dev.device_kind,
          "platform": dev.platform, "cpu_count": os.cpu_count(), "versions": common.versions(("jax", "jaxlib", "flax"))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="vit_b16")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
  args = p.parse_args(argv)
  print(json.dumps(run(args.model, args.batch, args.iters, args.warmup, args.dtype, args.attention)), flush=True)


if __name__ == "__main__":
  main()
