"""Stand-in CLIPs shipped with deft_jax: small CLIPs pretrained offline on clean CIFAR-10 images.

No pretrained CLIP can be downloaded on an offline machine, and pretraining the strongest stand-in takes about
two CPU-hours, so the stand-ins live in the package (``deft_jax/assets/standins/<name>/``: an fp16
``model.safetensors`` and its ``config.json``, in the layout every ``model.checkpoint`` loads, and a README
with the command that made it, its sha256 and its zero-shot accuracy). A config names one with

  c.model.checkpoint = "standin:cifar10_tiny32"

Each file's sha256 is checked on first use in a process; a file that differs (a truncated copy, a git-lfs
pointer, another model) is an error that says so. ``python -m deft_jax.pretrain.standin`` exports a pretrained
CLIP into this layout and measures it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from deft_jax.errors import CorruptCheckpointError, MissingFileError

PREFIX = "standin:"
DIR = Path(__file__).resolve().parents[1] / "assets" / "standins"
WEIGHTS = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Standin:
  name: str
  sha256: str  # of WEIGHTS
  zero_shot: float  # top-1 on the 10,000 CIFAR-10 test images, the 12 caption templates ensembled
  source: str  # what it was pretrained on

  @property
  def directory(self) -> Path:
    return DIR / self.name


STANDINS = {s.name: s for s in (
    Standin("cifar10_tiny32", zero_shot=0.7639,
            sha256="a35f1b97c1e5d982e3c9fb3188875d69f601ae05c2e085a18e653be752027147",
            source="CIFAR-10 training images 10,000-49,999 with their clean labels (class-name captions)"),
    Standin("cifar10_tiny32_v2", zero_shot=0.7712,
            sha256="a6f101ef3d31fb18906d20b6f5e945c2efa0cdbc0c48edabc8877adf22826768",
            source="cifar10_tiny32 pretrained 30 more epochs on the same images with varied-length captions"),
)}

_verified: dict[tuple[str, int, int], str] = {}


def is_standin(spec) -> bool:
  return isinstance(spec, str) and spec.startswith(PREFIX)


def get(spec: str) -> Standin:
  name = spec[len(PREFIX):] if is_standin(spec) else spec
  if name not in STANDINS:
    raise MissingFileError(f"no stand-in CLIP named {name!r}; the shipped ones are "
                           f"{', '.join(PREFIX + n for n in STANDINS)}")
  return STANDINS[name]


def sha256_of(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def path(spec: str) -> Path:
  """The directory of the stand-in ``spec`` ("standin:<name>" or "<name>"), its weights' sha256 checked."""
  s = get(spec)
  weights = s.directory / WEIGHTS
  if not weights.exists():
    raise MissingFileError(f"stand-in CLIP {s.name!r}: {weights} is missing (a partial checkout or install?)")
  st = weights.stat()
  key = (str(weights), st.st_size, st.st_mtime_ns)
  if key not in _verified:
    _verified[key] = sha256_of(weights)
  if _verified[key] != s.sha256:
    hint = " (a git-lfs pointer, not the file: run `git lfs pull`?)" if st.st_size < 4096 else ""
    raise CorruptCheckpointError(f"stand-in CLIP {s.name!r}: {weights} has sha256 {_verified[key]}, not the "
                                 f"{s.sha256} it was shipped with{hint}")
  return s.directory
