r"""Clothing1M (folder layout, manual download): 14 classes of real web label noise.

Real-world setting of the method with batch 32 and a class-balanced training subset of 1000 x batch images,
drawn once and saved (its list is kept in the workdir so the run can be reproduced and resumed).

  python -m deft_jax.main --config configs/clothing1m.py:root=/data/clothing1m --workdir /tmp/clothing1m
"""

from deft_jax.config_lib import paper_config, parse_args, real_world, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", root="")
  c = real_world(paper_config("clothing1m", eval_resize="resize_center_crop"), batch_size=32)
  c.data.root = a["root"]
  c.data.balanced_subset = 1000 * 32
  c.data.balanced_subset_seed = 0
  c.data.balanced_subset_file = ""  # the run stores it as <workdir>/balanced_subset.npz
  c.baselines.gmm.warmup_epochs = 1  # the reference's config/FFT/clothing1m.yaml (CIFAR-100N's and WebVision's: 5)
  c = variant(c, a["method"])
  if a["runlocal"]:
    c = runlocal(c)
    c.data.balanced_subset = 256
  return c
