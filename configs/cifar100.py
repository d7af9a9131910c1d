r"""CIFAR-100 (TFDS cifar100) with synthetic label noise; CIFAR augmentation (crop 32 pad 4, resize 224, flip).

  python -m deft_jax.main --config configs/cifar100.py --workdir /tmp/cifar100           # symmetric 40 %
  python -m deft_jax.main --config configs/cifar100.py:noise=idn,ratio=0.3 --workdir /tmp/cifar100_idn
  python -m deft_jax.main --config configs/cifar100.py:runlocal --workdir /tmp/cifar100_smoke
"""

from deft_jax.config_lib import paper_config, parse_args, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", noise="sym", ratio=0.4)
  c = paper_config("tfds:cifar100", augment="cifar")
  c.data.noise.type = a["noise"]
  c.data.noise.ratio = a["ratio"]
  c.data.normalization = "clip"
  c = variant(c, a["method"])
  return runlocal(c) if a["runlocal"] else c
