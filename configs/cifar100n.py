r"""CIFAR-100N: CIFAR-100 with real human label noise (40.2 %, the `noisy_label` set), TFDS cifar100_n.

Real-world setting of the method (config_lib.real_world): phase 1's real_noise recipe (strict selection: the
given label must also have the largest positive-vs-negative margin; 5 warm-up epochs with symmetric CE;
pseudo-labels in L_neg from epoch 2; a constant lr), phase 2 for 5 epochs at constant lr.

  python -m deft_jax.main --config configs/cifar100n.py --workdir /tmp/cifar100n
  python -m deft_jax.main --config configs/cifar100n.py:runlocal --workdir /tmp/cifar100n_smoke
"""

from deft_jax.config_lib import paper_config, parse_args, real_world, runlocal, variant


def get_config(arg=None):
  a = parse_args(arg, runlocal=False, method="deft", label_set="noisy_label")
  c = real_world(paper_config("tfds:cifar100_n", augment="cifar"))
  c.data.label_set = a["label_set"]
  c = variant(c, a["method"])
  return runlocal(c) if a["runlocal"] else c
