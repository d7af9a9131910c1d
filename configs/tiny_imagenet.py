r"""Tiny-ImageNet (folder layout: set --config.data.root) with synthetic label noise.

  # symmetric 40 %
  python -m deft_jax.main --config configs/tiny_imagenet.py:root=/data/tiny-imagenet-200 --workdir /tmp/tiny_imagenet
  python -m deft_jax.main --config configs/tiny_imagenet.py:noise=idn,ratio=0.3 --workdir /tmp/tiny_imagenet_idn
  python -m deft_jax.main --config configs/tiny_imagenet.py:runlocal --workdir /tmp/tiny_imagenet_smoke
"""

from deft_jax.config_lib import paper_config, parse_args, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", noise="sym", ratio=0.4, root="")
  c = paper_config("tiny_imagenet", augment="squash_crop", eval_resize="squash")
  c.data.noise.type = a["noise"]
  c.data.noise.ratio = a["ratio"]
  c.data.normalization = "clip"
  c.data.root = a["root"]
  c.baselines.gmm.warmup_epochs = 5  # the reference's config/FFT/tiny_imagenet.yaml (CIFAR-100's, CUB's, Cars': 1)
  c = variant(c, a["method"])
  return runlocal(c) if a["runlocal"] else c
