"""Helpers for the data tests: tiny dataset trees made of real CIFAR-10 JPEGs.

The JPEG bytes come from the demo data packaged with deft_jax, so these trees
need nothing outside the repository.
"""

import pathlib

import numpy as np

from deft_jax.data import cifar_offline


def real_jpegs(n: int, start: int = 0) -> tuple[list[bytes], np.ndarray]:
  """n real CIFAR-10 train JPEGs and their clean labels."""
  split = cifar_offline.load_demo(label_set="clean_label")["train"]
  return ([split.reader.read(i) for i in range(start, start + n)],
          split.clean_labels[start:start + n])


def write_webvision(root: pathlib.Path, per_class: int = 2, classes: int = 3) -> pathlib.Path:
  """WebVision 1.0 layout with `classes` classes (+ one class beyond the first 50)."""
  jpegs, _ = real_jpegs(per_class * (classes + 2))
  (root / "info").mkdir(parents=True)
  (root / "val_images_256").mkdir()
  synsets = [f"n0{1440764 + i} name{i}, alias{i}" for i in range(60)]
  (root / "info/synsets.txt").write_text("\n".join(synsets) + "\n")
  google, flickr, val = [], [], []
  k = 0
  for c in list(range(classes)) + [55]:  # class 55 lies beyond the first 50
    for j in range(per_class):
      for src, lst in (("google", google), ("flickr", flickr)):
        rel = f"{src}/q{c:04d}/{j:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpegs[k % len(jpegs)])
        lst.append(f"{rel} {c}")
      name = f"val{k:06d}.jpg"
      (root / "val_images_256" / name).write_bytes(jpegs[k % len(jpegs)])
      val.append(f"{name} {c}")
      k += 1
  (root / "info/train_filelist_google.txt").write_text("\n".join(google) + "\n")
  (root / "info/train_filelist_flickr.txt").write_text("\n".join(flickr) + "\n")
  (root / "info/val_filelist.txt").write_text("\n".join(val) + "\n")
  return root


def write_tiny_imagenet(root: pathlib.Path, per_class: int = 3) -> pathlib.Path:
  """tiny-imagenet-200 layout with 3 classes (wnids.txt deliberately unsorted)."""
  wnids = ["n02000003", "n01000001", "n03000002"]
  words = {"n01000001": "goldfish, Carassius auratus", "n02000003": "crane",
           "n03000002": "crane, derrick", "n09999999": "unused"}
  jpegs, _ = real_jpegs(per_class * 3 * 2)
  root.mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in words.items()))
  k = 0
  for w in wnids:
    d = root / "train" / w / "images"
    d.mkdir(parents=True)
    for j in range(per_class):
      (d / f"{w}_{j}.JPEG").write_bytes(jpegs[k])
      k += 1
  (root / "val/images").mkdir(parents=True)
  lines = []
  for j in range(per_class * 3):
    (root / f"val/images/val_{j}.JPEG").write_bytes(jpegs[k])
    k += 1
    lines.append(f"val_{j}.JPEG\t{wnids[j % 3]}\t0\t0\t31\t31")
  (root / "val/val_annotations.txt").write_text("\n".join(lines) + "\n")
  return root


CLOTHING_NAMES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie",
                  "Windbreaker", "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest",
                  "Underwear"]


def write_clothing1m(root: pathlib.Path, n_train: int = 28, n_test: int = 6) -> pathlib.Path:
  """Clothing1M layout: images/<d>/<dd>/*.jpg and the five list files."""
  jpegs, _ = real_jpegs(n_train + n_test)
  keys = []
  for k, b in enumerate(jpegs):
    rel = f"images/{k % 10}/{k:02d}/{1000 + k}.jpg"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b)
    keys.append(rel)
  train, test = keys[:n_train], keys[n_train:]
  noisy = {k: i % 14 for i, k in enumerate(train)}
  clean = {k: (i + 1) % 14 for i, k in enumerate(train[:5])}  # a few train keys have clean labels
  clean.update({k: i % 14 for i, k in enumerate(test)})
  (root / "noisy_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in noisy.items()))
  (root / "clean_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in clean.items()))
  (root / "noisy_train_key_list.txt").write_text("\n".join(train) + "\n")
  (root / "clean_test_key_list.txt").write_text("\n".join(test) + "\n")
  (root / "category_names_eng.txt").write_text("\n".join(CLOTHING_NAMES) + "\n")
  return root
