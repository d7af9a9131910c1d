"""The captions of contrastive pretraining: which token sequences the text tower sees for a class.

``kind="templates"``: the 12 caption templates of models/zeroshot.py filled with the class name (about 11
tokens: the text tower's later positions never train). ``kind="varied"``: a bank of caption layouts drawn once
from a seed, every layout filled with every class name, covering what the text tower meets later:

- a share ``template_prob`` of the layouts are the 12 templates themselves (the zero-shot captions);
- the others put 1..``max_fill`` filler tokens around the name: at the end ("<fill> a photo of a <name>." or
  "<fill> <name>."), in the middle ("<fill> <name> <fill>.") or at the front ("<name> <fill>.") as phase 1's
  ``class_token_position`` does. A filler is real words (whole-word entries of the BPE vocabulary), random
  tokens, or, with probability ``soft_prob``, "soft" vectors: N(0, ``soft_std``) in place of the word
  embeddings, which is what phase 1's randomly initialised context vectors are.

Lengths reach the context length, so every position that phase 1's prompts use (16 context vectors put the name
and the end of text at positions 17-19) is trained. Words of the class names never appear in a filler.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from deft_jax.data.class_names import clean_name
from deft_jax.errors import ConfigError
from deft_jax.models import zeroshot
from deft_jax.models.tokenizer import Tokenizer

KINDS = ("templates", "varied")
POSITIONS = ("end", "middle", "front")


@dataclasses.dataclass(frozen=True)
class CaptionBank:
  """Token ids of T caption layouts x C classes.

  Attributes:
    ids: int32 [T, C, L]; L trimmed to the longest caption.
    eot: int32 [T, C] end-of-text positions.
    soft: bool [T, C, L] positions whose word embedding is replaced by N(0, soft_std) at every step, or None.
    per_step: layouts drawn per training step (each image's caption comes from one of them); 0: a layout per
      image from all T (the "templates" kind).
    soft_std: standard deviation of the soft vectors.
  """

  ids: np.ndarray
  eot: np.ndarray
  soft: Optional[np.ndarray] = None
  per_step: int = 0
  soft_std: float = 0.02

  @property
  def shape(self) -> tuple[int, int, int]:
    return self.ids.shape

  def describe(self) -> dict:
    """Counts of what the bank holds (for the pretraining record)."""
    lengths = self.eot + 1
    return {"layouts": int(self.ids.shape[0]), "max_tokens": int(lengths.max()),
            "mean_tokens": round(float(lengths.mean()), 2),
            "soft_layouts": int(self.soft.any(axis=(1, 2)).sum()) if self.soft is not None else 0,
            "per_step": int(self.per_step)}


def bank(class_names: Sequence[str], tokenizer: Tokenizer, c) -> CaptionBank:
  """The caption bank that config section ``pretrain.captions`` (``c``) describes."""
  if c.kind not in KINDS:
    raise ConfigError(f"pretrain.captions.kind must be one of {KINDS}, got {c.kind!r}")
  if c.kind == "templates":
    ids = tokenizer.trim_padding(
        np.stack([tokenizer([t.format(n) for n in class_names]) for t in zeroshot.TEMPLATES]))
    return CaptionBank(ids, tokenizer.eot_positions(ids))
  return varied_bank(class_names, tokenizer, size=int(c.size), max_fill=int(c.max_fill),
                     template_prob=float(c.template_prob), soft_prob=float(c.soft_prob), seed=int(c.seed),
                     per_step=int(c.per_step), soft_std=float(c.soft_std))


def varied_bank(class_names: Sequence[str], tokenizer: Tokenizer, *, size: int = 2048, max_fill: int = 24,
                template_prob: float = 0.25, soft_prob: float = 0.25, seed: int = 0, per_step: int = 12,
                soft_std: float = 0.02) -> CaptionBank:
  """``size`` layouts drawn from ``seed`` (see the module docstring) x the classes."""
  if size < 1 or max_fill < 1 or per_step < 1:
    raise ConfigError(f"pretrain.captions: size, max_fill and per_step must be positive, got {size}, {max_fill}, "
                      f"{per_step}")
  if not (0 <= template_prob <= 1 and 0 <= soft_prob <= 1):
    raise ConfigError(f"pretrain.captions: template_prob and soft_prob are probabilities, got {template_prob}, "
                      f"{soft_prob}")
  names = [clean_name(n) for n in class_names]
  full = [tokenizer.encode(n + ".") for n in names]  # "<name>." as one string, as phase 1's prompts
  head_len = [len(tokenizer.encode(n)) for n in names]
  templated = [[tokenizer.encode(t.format(n)) for n in names] for t in zeroshot.TEMPLATES]
  words, tokens = filler_vocabulary(tokenizer, names)
  placeholder = tokenizer.encode("X")[0]
  ctx_len = tokenizer.context_length
  rng = np.random.default_rng(seed)
  rows, soft_rows = [], []
  for _ in range(size):
    if rng.random() < template_prob:
      t = rng.integers(len(templated))
      rows.append([[tokenizer.bos_id] + ids + [tokenizer.eos_id] for ids in templated[t]])
      soft_rows.append([[False] * len(r) for r in rows[-1]])
      continue
    position = POSITIONS[rng.choice(3, p=[0.5, 0.25, 0.25])]
    core = full
    if position == "end" and rng.random() < 0.5:  # "<fill> a photo of a <name>."
      core = templated[rng.integers(len(templated))]
    room = ctx_len - 2 - max(len(x) for x in core)
    if room < 1:
      raise ConfigError(f"a class name is too long for a {ctx_len}-token caption with a filler")
    n = int(rng.integers(1, min(max_fill, room) + 1))
    source = rng.choice(3, p=[(1 - soft_prob) / 2, (1 - soft_prob) / 2, soft_prob])
    fill = [int(placeholder)] * n if source == 2 else [int(x) for x in rng.choice(words if source == 0 else tokens, n)]
    is_soft = source == 2
    layout, flags = [], []
    for k in range(len(names)):
      body, soft = _place(position, fill, core[k], head_len[k], is_soft)
      layout.append([tokenizer.bos_id] + body + [tokenizer.eos_id])
      flags.append([False] + soft + [False])
    rows.append(layout)
    soft_rows.append(flags)
  length = max(len(r) for layout in rows for r in layout)
  ids = np.full((size, len(names), length), tokenizer.pad_id, np.int32)
  soft = np.zeros((size, len(names), length), bool)
  for t, (layout, flags) in enumerate(zip(rows, soft_rows)):
    for k, (r, f) in enumerate(zip(layout, flags)):
      ids[t, k, : len(r)] = r
      soft[t, k, : len(f)] = f
  return CaptionBank(ids, tokenizer.eot_positions(ids), soft, per_step=per_step, soft_std=soft_std)


def _place(position: str, fill: list, core: list, head_len: int, soft: bool) -> tuple[list, list]:
  """The caption body (no start / end token) and which of its positions are soft."""
  f = [soft] * len(fill)
  if position == "end":
    return fill + core, f + [False] * len(core)
  head, tail = core[:head_len], core[head_len:]
  if position == "front":
    return head + fill + tail, [False] * len(head) + f + [False] * len(tail)
  h = len(fill) // 2
  return (fill[:h] + head + fill[h:] + tail,
          f[:h] + [False] * len(head) + f[h:] + [False] * len(tail))


def filler_vocabulary(tokenizer: Tokenizer, names: Sequence[str], *, common: int = 20000) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
  """(words, tokens): ids of whole alphabetic words of 3-12 letters among the ``common`` first BPE entries, and
  of every ordinary token; both without any token of a class name (a filler never names a class)."""
  vocab = tokenizer.vocabulary()
  banned = {i for n in names for w in n.split() for i in tokenizer.encode(w)}
  banned |= {i for n in names for i in tokenizer.encode(n)}
  special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
  words = sorted(i for tok, i in vocab.items()
                 if i < common and tok.endswith("</w>") and tok[:-4].isalpha() and 3 <= len(tok) - 4 <= 12
                 and i not in banned)
  tokens = sorted(i for i in vocab.values() if i not in banned and i not in special and i < tokenizer.vocab_size)
  return np.asarray(words, np.int32), np.asarray(tokens, np.int32)
