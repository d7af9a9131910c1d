"""Builds deft_jax/demo_data/cifar10n_demo.npz from the shared CIFAR-10 JPEG + CIFAR-10N assets.

  python -m deft_jax.demo_data.build_demo_data /path/to/assets [--out FILE]

`assets` holds cifar10-jpeg/cifar10_jpeg.npz and cifar-n-labels/cifar10n_labels.npz.
The JPEG bytes are copied unchanged (no re-encoding). Three slices:
  noisy_train  CIFAR-10 train 0..3999, with every CIFAR-10N label set
  pretrain     CIFAR-10 train 45000..49999, clean labels (held out from noisy_train)
  test         CIFAR-10 test 0..999
Each slice stores <slice>_jpeg (uint8 bytes), <slice>_offsets (int64 [n+1]) and
<slice>_index (the original CIFAR-10 index).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib

import numpy as np

SLICES = {"noisy_train": ("train", 0, 4000), "pretrain": ("train", 45000, 50000),
          "test": ("test", 0, 1000)}
LABEL_SETS = ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2",
              "random_label3")
FORMAT_VERSION = 1


def _slice_bytes(jpeg: np.ndarray, offsets: np.ndarray, start: int, end: int):
  lo, hi = offsets[start], offsets[end]
  return jpeg[lo:hi].copy(), (offsets[start:end + 1] - lo).astype(np.int64)


def build(assets: pathlib.Path, out: pathlib.Path) -> str:
  """Writes the demo npz; returns its sha256."""
  images = np.load(assets / "cifar10-jpeg" / "cifar10_jpeg.npz", allow_pickle=False)
  human = np.load(assets / "cifar-n-labels" / "cifar10n_labels.npz", allow_pickle=False)
  if not np.array_equal(images["train_labels"], human["clean_label"]):
    raise ValueError("CIFAR-10N clean_label does not equal the JPEG set's train_labels: "
                     "the two files are not in the same order")
  arrays = {"class_names": np.asarray(images["class_names"]).astype(str),
            "format_version": np.int64(FORMAT_VERSION)}
  for name, (split, start, end) in SLICES.items():
    jpeg, offsets = _slice_bytes(images[f"{split}_jpeg"], images[f"{split}_offsets"], start, end)
    arrays[f"{name}_jpeg"], arrays[f"{name}_offsets"] = jpeg, offsets
    arrays[f"{name}_index"] = np.arange(start, end, dtype=np.int64)
    clean = images[f"{split}_labels"][start:end]
    arrays[f"{name}_clean_label"] = clean.astype(np.uint8)
    if name == "noisy_train":
      for label_set in LABEL_SETS[1:]:
        arrays[f"{name}_{label_set}"] = human[label_set][start:end].astype(np.uint8)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, **arrays)
  return hashlib.sha256(out.read_bytes()).hexdigest()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("assets", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "cifar10n_demo.npz")
  args = parser.parse_args()
  digest = build(args.assets, args.out)
  print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}")


if __name__ == "__main__":
  main()
