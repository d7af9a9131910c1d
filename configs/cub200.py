r"""CUB-200-2011 (TFDS caltech_birds2011) with synthetic label noise.

  python -m deft_jax.main --config configs/cub200.py --workdir /tmp/cub200           # symmetric 40 %
  python -m deft_jax.main --config configs/cub200.py:noise=idn,ratio=0.3 --workdir /tmp/cub200_idn
  python -m deft_jax.main --config configs/cub200.py:runlocal --workdir /tmp/cub200_smoke
"""

from deft_jax.config_lib import paper_config, parse_args, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", noise="sym", ratio=0.4)
  c = paper_config("tfds:caltech_birds2011", augment="squash_crop", eval_resize="squash")
  c.data.noise.type = a["noise"]
  c.data.noise.ratio = a["ratio"]
  c.data.normalization = "clip"
  c = variant(c, a["method"])
  return runlocal(c) if a["runlocal"] else c
