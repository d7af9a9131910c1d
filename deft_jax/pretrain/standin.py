"""A pretrained CLIP made into a shipped stand-in (models/standins.py), and its zero-shot accuracy.

  # fp16 copy of the pretrain stage's CLIP into deft_jax/assets/standins/<name>/; prints its sha256
  python -m deft_jax.pretrain.standin export W/pretrain/clip cifar10_tiny32
  # zero-shot top-1 on the first N CIFAR-10 test images (0 = all 10,000), the 12 templates ensembled and one
  python -m deft_jax.pretrain.standin zero_shot standin:cifar10_tiny32 --root ../shared/assets --test_size 0
  # zero-shot with phase 1's initial prompts, and after 100 steps of CoOp tuning (deft_jax/pretrain/probe.py)
  python -m deft_jax.pretrain.standin probe standin:cifar10_tiny32 --root ../shared/assets

The export keeps every tensor (cast to float16, which is all the file stores: loading casts back to float32)
and ``config.json``; the tokenizer is the package's own OpenAI vocabulary, which the pretrain stage copies
beside its CLIP unchanged, so it is not copied again.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np

from deft_jax import parallel
from deft_jax.data import cifar_offline
from deft_jax.data.config import image_spec
from deft_jax.models import clip as clip_lib
from deft_jax.models import clip_weights, standins, zeroshot
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.pretrain.train import ZeroShotEval


def export(src: str | Path, name: str, *, dest_root: Path = standins.DIR) -> tuple[Path, str]:
  """Writes ``dest_root/name/{model.safetensors (fp16), config.json, pretrain_info.json}`` from the HF-format
  CLIP directory ``src``; returns the directory and the weights' sha256."""
  from safetensors.numpy import save_file
  src = Path(src)
  state = clip_weights.read_safetensors(src)
  # np.array, not np.ascontiguousarray: the latter makes the 0-d logit_scale 1-d.
  half = {k: np.array(v, np.float16 if v.dtype.kind == "f" else v.dtype, order="C") for k, v in state.items()}
  out = Path(dest_root) / name
  out.mkdir(parents=True, exist_ok=True)
  save_file(half, str(out / standins.WEIGHTS))
  shutil.copy(src / "config.json", out / "config.json")
  if (src / "pretrain_info.json").exists():
    shutil.copy(src / "pretrain_info.json", out / "pretrain_info.json")
  return out, standins.sha256_of(out / standins.WEIGHTS)


def zero_shot_accuracy(checkpoint: str, root: str, *, test_size: int = 0, batch_size: int = 256, mesh=None) -> dict:
  """Zero-shot top-1 of ``checkpoint`` on the first ``test_size`` CIFAR-10 test images of ``root`` (the shared
  assets layout): {"ensemble": the 12 caption templates averaged, "single": "a photo of a {}."}. ``mesh``: the
  devices to run on (default: all of them)."""
  test = cifar_offline.load_cifar10n_offline(root, train_indices="0:1", test_size=test_size)["test"]
  cfg = clip_weights.config_from_checkpoint(checkpoint)
  model = clip_lib.CLIP(cfg)
  abstract = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  params = clip_weights.load_pretrained(checkpoint, abstract, scan=cfg.scan)
  data = ml_collections.ConfigDict({"image_size": cfg.vision.image_size, "normalization": "clip"})
  evaluate = ZeroShotEval(model, test, Tokenizer(context_length=cfg.text.context_length),
                          mesh=mesh or parallel.make_mesh(), batch_size=batch_size,
                          data_kw=image_spec(data, cfg.vision.image_size).pipeline_kw(),
                          template_sets={"ensemble": zeroshot.TEMPLATES, "single": (zeroshot.ZERO_SHOT_TEMPLATE,)})
  return evaluate(jax.tree.map(jax.numpy.asarray, params))


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  e = sub.add_parser("export", help="fp16 copy of a pretrained CLIP directory as a stand-in")
  e.add_argument("src")
  e.add_argument("name")
  z = sub.add_parser("zero_shot", help="zero-shot accuracy on CIFAR-10's test images")
  z.add_argument("checkpoint", help="standin:<name>, a CLIP directory or a .safetensors file")
  z.add_argument("--root", default="../shared/assets")
  z.add_argument("--test_size", type=int, default=0)
  pr = sub.add_parser("probe", help="zero-shot with phase 1's initial prompts and after CoOp tuning "
                                    "(deft_jax/pretrain/probe.py)")
  pr.add_argument("checkpoint", help="standin:<name>, a CLIP directory or a .safetensors file")
  pr.add_argument("--root", default="../shared/assets")
  pr.add_argument("--test_size", type=int, default=0)
  pr.add_argument("--steps", type=int, default=100)
  pr.add_argument("--seeds", type=int, default=3)
  pr.add_argument("--logit_scale", type=float, default=0.0, help="CoOp's scale (0: the model's own)")
  args = ap.parse_args(argv)
  if args.cmd == "export":
    out, digest = export(args.src, args.name)
    print(json.dumps({"dir": str(out), "sha256": digest, "bytes": (out / standins.WEIGHTS).stat().st_size}))
  elif args.cmd == "probe":
    from deft_jax.pretrain import probe
    print(json.dumps(probe.probe(args.checkpoint, args.root, test_size=args.test_size, steps=args.steps,
                                 seeds=args.seeds, logit_scale=args.logit_scale or None)))
  else:
    accs = zero_shot_accuracy(args.checkpoint, args.root, test_size=args.test_size)
    print(json.dumps({"checkpoint": args.checkpoint, "test_size": args.test_size or 10000, **accs}))


if __name__ == "__main__":
  main()
