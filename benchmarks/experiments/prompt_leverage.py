r"""How far phase 1's learned prompts move the text features of a stand-in: the leverage DEFT's negative prompts
need to tell one class from another.

For each finished detection run (a workdir with detect/learned_params.npz) this loads its CLIP and its learned
positive and negative contexts and prints, over the classes: the cosine between each class's positive and negative
prompt features (1: the two prompts say the same thing), the cosine between the learned positive prompt and the
prompt with phase 1's initial N(0, 0.02) context (1: training did not move it), the spread over classes of
cos(negative prompt_k, positive prompt_k) (0: the negative context is a class-independent shift), and the mean
cosine between two classes' positive prompts (1: the context has drowned the class names).

  PYTHONPATH=. python benchmarks/experiments/prompt_leverage.py --checkpoint standin:cifar10_tiny32 \
      --workdirs /tmp/standin_seeds/seed0 /tmp/standin_seeds/seed1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights
from deft_jax.models import prompts as prompts_lib
from deft_jax.models.tokenizer import Tokenizer

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def leverage(checkpoint: str, workdirs, *, n_ctx: int = 16) -> list[dict]:
  cfg = clip_weights.config_from_checkpoint(checkpoint)
  model = clip_lib.CLIP(cfg)
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  params = jax.tree.map(jnp.asarray, clip_weights.load_pretrained(checkpoint, abstract, scan=cfg.scan))
  template = prompts_lib.build_template(CIFAR10, Tokenizer(context_length=cfg.text.context_length), n_ctx=n_ctx)
  init = prompts_lib.init_prompts(jax.random.key(0), template, cfg.text.width)["pos_ctx"]
  (start,) = prompts_lib.context_features(model, params, [init], template)
  out = []
  for w in workdirs:
    learned = np.load(Path(w) / "detect" / "learned_params.npz")
    pos, neg = prompts_lib.context_features(
        model, params, [jnp.asarray(learned["prompts/pos_ctx"]), jnp.asarray(learned["prompts/neg_ctx"])], template)
    pos_neg = np.asarray(jnp.sum(pos * neg, -1))
    between = np.asarray(pos @ pos.T)[~np.eye(len(CIFAR10), dtype=bool)]
    out.append({"workdir": str(w), "cos_pos_neg_mean": round(float(pos_neg.mean()), 4),
                "cos_pos_neg_spread_over_classes": round(float(pos_neg.max() - pos_neg.min()), 4),
                "cos_learned_pos_vs_initial": round(float(np.mean(np.asarray(jnp.sum(pos * start, -1)))), 4),
                "cos_between_classes_pos": round(float(between.mean()), 4)})
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--workdirs", nargs="+", required=True)
  args = p.parse_args()
  for row in leverage(args.checkpoint, args.workdirs):
    print(json.dumps({"checkpoint": args.checkpoint, **row}))


if __name__ == "__main__":
  main()
