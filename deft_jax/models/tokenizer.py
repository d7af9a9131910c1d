"""The CLIP tokenizer (via transformers) with CLIP's fixed context length.

Files come from a checkpoint directory, any directory holding ``vocab.json`` + ``merges.txt``, or the copy of
OpenAI's BPE vocabulary shipped in ``deft_jax/assets/clip_bpe`` (the default, so no network is needed).
Note: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` is silently ignored by transformers 5, hence
``from_pretrained(directory)``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from deft_jax.errors import MissingFileError

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "clip_bpe"
CONTEXT_LENGTH = 77


def clean_text(text: str) -> str:
  """OpenAI CLIP's text cleaning (HTML entities decoded twice, whitespace collapsed), minus ftfy's mojibake
  repair; the transformers tokenizer does not decode HTML entities by itself."""
  text = html.unescape(html.unescape(text))
  return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
  """Texts -> int32 ids ``[N, context_length]``: [SOS] tokens [EOT] padding.

  Over-long texts are truncated so that the end-of-text token is kept (as OpenAI's ``clip.tokenize(...,
  truncate=True)`` does). Padding uses the tokenizer's pad id; CLIP pools at the end-of-text position, so
  the pad id does not change any feature.
  """

  def __init__(self, directory: Optional[str | Path] = None, context_length: int = CONTEXT_LENGTH,
               fast: bool = False):
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    has_bpe = (directory / "vocab.json").exists() and (directory / "merges.txt").exists()
    if not (has_bpe or (fast and (directory / "tokenizer.json").exists())):
      raise MissingFileError(f"no CLIP tokenizer in {directory}: it needs vocab.json and merges.txt")
    cls = CLIPTokenizerFast if fast else CLIPTokenizer
    self._tok = cls.from_pretrained(str(directory))
    self.context_length = context_length
    self.bos_id = int(self._tok.bos_token_id)
    self.eos_id = int(self._tok.eos_token_id)
    self.pad_id = int(self._tok.pad_token_id)
    self.vocab_size = len(self._tok)

  def encode(self, text: str) -> list[int]:
    """BPE ids of a text, without start / end tokens."""
    return list(self._tok(clean_text(text), add_special_tokens=False)["input_ids"])

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
    for i, text in enumerate(texts):
      ids = self.encode(text)[: self.context_length - 2]
      ids = [self.bos_id] + ids + [self.eos_id]
      out[i, : len(ids)] = ids
    return out

  def vocabulary(self) -> dict[str, int]:
    """BPE entry -> id (whole words end in "</w>")."""
    return dict(self._tok.get_vocab())

  def eot_positions(self, ids: np.ndarray) -> np.ndarray:
    """int32 [...]: where each row of ``ids`` [..., T] has its (first) end-of-text token."""
    return np.argmax(np.asarray(ids) == self.eos_id, axis=-1).astype(np.int32)

  def trim_padding(self, ids: np.ndarray) -> np.ndarray:
    """``ids`` [..., context_length] cut after the latest end-of-text token of any row.

    The text tower is causal and pools at the end-of-text token, so the padding after it cannot change any
    feature: short captions (class names in templates) then cost a fraction of the full context.
    """
    ids = np.asarray(ids)
    return ids[..., : int(self.eot_positions(ids).max()) + 1]

  @classmethod
  def for_checkpoint(cls, checkpoint: Optional[str | Path], **kw) -> "Tokenizer":
    """The tokenizer files beside a local checkpoint (its directory, or the folder of its .safetensors file)
    when it has them, else the bundled OpenAI vocabulary (that of every OpenAI CLIP; hub ids use it)."""
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
      path = path.parent
    if path is not None and (path / "vocab.json").exists():
      return cls(path, **kw)
    return cls(None, **kw)
