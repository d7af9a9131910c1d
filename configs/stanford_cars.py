r"""Stanford Cars (TFDS cars196) with synthetic label noise.

  python -m deft_jax.main --config configs/stanford_cars.py --workdir /tmp/stanford_cars           # symmetric 40 %
  python -m deft_jax.main --config configs/stanford_cars.py:noise=idn,ratio=0.3 --workdir /tmp/stanford_cars_idn
  python -m deft_jax.main --config configs/stanford_cars.py:runlocal --workdir /tmp/stanford_cars_smoke
"""

from deft_jax.config_lib import paper_config, parse_args, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", noise="sym", ratio=0.4)
  c = paper_config("tfds:cars196", augment="squash_crop", eval_resize="squash")
  c.data.noise.type = a["noise"]
  c.data.noise.ratio = a["ratio"]
  c.data.normalization = "clip"
  c = variant(c, a["method"])
  return runlocal(c) if a["runlocal"] else c
