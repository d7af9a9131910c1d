r"""WebVision 1.0 (Google subset, first 50 classes; folder layout, manual download), tested on WebVision val and
on ImageNet val of the same 50 classes (TFDS imagenet2012, second test split).

  python -m deft_jax.main --config configs/webvision.py:root=/data/webvision --workdir /tmp/webvision
"""

from deft_jax.config_lib import paper_config, parse_args, real_world, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", root="", imagenet_val=True)
  c = real_world(paper_config("webvision", augment="squash_crop", eval_resize="squash_center_crop"))
  c.data.root = a["root"]
  c.data.num_classes = 50
  c.data.webvision_subset = "google"
  c.data.imagenet_val = bool(a["imagenet_val"])
  c = variant(c, a["method"])
  return runlocal(c) if a["runlocal"] else c
