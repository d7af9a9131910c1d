"""The CLIP tokenizer against an independent re-implementation of OpenAI's BPE, run on the original vocabulary."""

import functools
import gzip
import html

import pytest
import regex

from deft_jax.models.tokenizer import Tokenizer


def _bytes_to_unicode():
  """Byte -> symbol, in vocabulary order: printable bytes map to themselves and come first, then the
  remaining bytes, mapped to code points from 256 up."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  table = {b: chr(b) for b in keep}
  for extra, b in enumerate(b for b in range(256) if b not in keep):
    table[b] = chr(256 + extra)
  return table


class ReferenceBPE:
  """OpenAI CLIP's byte-level BPE (without ftfy), from bpe_simple_vocab_16e6.txt.gz."""

  PATTERN = regex.compile(
      r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
      regex.IGNORECASE)

  def __init__(self, path):
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    self.byte_map = _bytes_to_unicode()
    symbols = list(self.byte_map.values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    self.ids = {tok: i for i, tok in enumerate(vocab)}
    self.rank = {m: i for i, m in enumerate(merges)}

  @functools.lru_cache(maxsize=None)
  def _bpe(self, word):
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      pairs = [(self.rank.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
      best, _ = min(pairs)
      if best == float("inf"):
        break
      pair = min(pairs)[1]
      a, b = parts[pair], parts[pair + 1]
      merged, i = [], 0
      while i < len(parts):  # merge every occurrence of the best pair, left to right
        if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
          merged.append(a + b)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return tuple(parts)

  def encode(self, text):
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip().lower()
    out = []
    for tok in regex.findall(self.PATTERN, text):
      word = "".join(self.byte_map[b] for b in tok.encode("utf-8"))
      out.extend(self.ids[p] for p in self._bpe(word))
    return out


STRINGS = [
    "a photo of a cat.",
    "Hello, World!!! It's a dog's life; isn't it?",
    "Über-café naïve résumé — 東京 🐦",
    "3.14159 and 2024-11-25, 1000000 birds",
    "  many    spaces\tand\nnewlines  ",
    "Black_footed_Albatross (Phoebastria nigripes)",
    "AM General Hummer SUV 2000",
    "&amp; html &lt;tags&gt;",
    "supercalifragilisticexpialidocious " * 30,
]


@pytest.fixture(scope="module")
def reference(assets_dir):
  return ReferenceBPE(assets_dir / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz")


@pytest.mark.parametrize("fast", [False, True], ids=["slow", "fast"])
def test_token_ids_equal_reference_bpe(reference, fast):
  tok = Tokenizer(fast=fast)
  ids = tok(STRINGS)
  for s, row in zip(STRINGS, ids):
    want = [49406] + reference.encode(s)[:75] + [49407]
    assert list(row[: len(want)]) == want, s
    assert (row[len(want):] == tok.pad_id).all()


def test_overlong_text_is_truncated_keeping_end_of_text():
  ids = Tokenizer()(["word " * 200])
  assert ids.shape == (1, 77)
  assert ids[0, 0] == 49406 and ids[0, -1] == 49407
  assert (ids[0, 1:-1] != 49407).all()


def test_missing_tokenizer_files_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    Tokenizer(tmp_path)
