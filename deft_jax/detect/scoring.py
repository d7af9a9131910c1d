"""The scoring pass: detector outputs for every example of a split, in memory that does not grow with N on the
devices and is bounded on the host.

- The prompts' text features are computed once per pass (they are fixed), then each batch runs the image side
  only (``Detector.jit_score_images``).
- The per-example scalars (p_clean, is_clean, suggested, margin, label_prob, log_p_label, strict_margin) are
  replicated and kept on the host, a few bytes per example. The [B, C] and [B, D] arrays (``step.ROW_ARRAYS``)
  stay split over the devices like the batch; each process reads back only its own rows, one batch behind the
  devices (the next batch is already queued), and writes them to ``.npy`` files as they arrive
  (:class:`RowFiles`). The devices hold at most two batches' outputs, the host one batch's rows.
- Several processes: each appends the rows it scored (and their example indices) to a part file of its own;
  after a barrier process 0 copies them, block by block, into the final memory-mapped ``.npy`` files and
  deletes the parts. The parts are whole files per process, so no two hosts ever write one page of a shared
  file (which a network file system could interleave).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import jax
import numpy as np
from numpy.lib import format as npy_format

from deft_jax import parallel
from deft_jax.detect import step as detect_step

SCALARS = ("p_clean", "is_clean", "suggested", "margin", "label_prob", "log_p_label", "strict_margin")
MERGE_BLOCK_ROWS = 65536
# The batch's indices and padding mask split like the row arrays: which example each local row is.
LOCAL = ("local_index", "local_valid")
# Output files named otherwise than their arrays (the detect stage's ``features.npy``).
FILE_STEMS = {"embedding": "features"}


def local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded array that live on this process's devices, in global order (the rows this
  process fed to the batch)."""
  shards = {s.index[0].start or 0: s for s in x.addressable_shards}  # replicas of one slice count once
  return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


class RowFiles:
  """[N, ...] arrays written row by row, by example index: ``.npy`` files in ``directory`` (``{name}.npy``), or
  host arrays without a directory (small splits, tests). Rows go to the files with positional writes, not
  through a memory map: the pages of a written map would stay resident in the writing process (its RSS would
  grow to the file's size), those of a written file are the kernel's to evict. Collective with several
  processes: every process creates it, writes its rows and calls :meth:`finish`."""

  def __init__(self, directory: Optional[Path], num_examples: int):
    self.dir, self.n = (Path(directory) if directory is not None else None), int(num_examples)
    self.pid, self.count = jax.process_index(), jax.process_count()
    self.arrays: dict[str, np.ndarray] = {}  # no directory: the arrays themselves
    self.files: dict[str, tuple] = {}  # name -> (file descriptor, header bytes, dtype, row shape)
    self.part_index: list[np.ndarray] = []

  def _open(self, name: str, dtype, shape) -> tuple:
    """The file ``name`` is written to: the final one's temporary (one process), else this process's part."""
    self.dir.mkdir(parents=True, exist_ok=True)
    if self.count == 1:
      return (*_create_npy(self._path(name, ".tmp.npy"), dtype, (self.n,) + shape), dtype, shape)
    return (os.open(self._part(name, self.pid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 0, dtype, shape)

  def _path(self, name: str, suffix: str = ".npy") -> Path:
    return self.dir / (FILE_STEMS.get(name, name) + suffix)

  def _part(self, name: str, p: int) -> Path:
    return self.dir / f".{FILE_STEMS.get(name, name)}.part-{p}-of-{self.count}"

  def write(self, index: np.ndarray, rows: dict[str, np.ndarray]) -> None:
    """Rows of valid examples only (``index``: their example indices)."""
    index = np.asarray(index, np.int64)
    for k, v in rows.items():
      v = np.asarray(v)
      if self.dir is None:
        if k not in self.arrays:
          self.arrays[k] = np.zeros((self.n,) + v.shape[1:], v.dtype)
        self.arrays[k][index] = v
        continue
      if k not in self.files:
        self.files[k] = self._open(k, v.dtype, v.shape[1:])
      fd, header, _, _ = self.files[k]
      if self.count == 1:
        _write_runs(fd, header, index, v)
      else:
        os.write(fd, np.ascontiguousarray(v).tobytes())
    if self.count > 1:
      self.part_index.append(index)

  def finish(self) -> dict[str, np.ndarray]:
    """The complete arrays: ``{name: [N, ...]}`` (read-only memory maps of the files in place)."""
    if self.dir is None:
      return self.arrays
    names = sorted(self.files)
    meta = self._close()
    if self.count > 1:
      self._merge_parts(meta)
    else:
      for k in names:
        os.replace(self._path(k, ".tmp.npy"), self._path(k))
    parallel.sync_processes("scoring pass: files in place")
    return {k: np.load(self._path(k), mmap_mode="r") for k in names}

  def _close(self) -> dict:
    """Closes the files written to; {name: (dtype, row shape)}."""
    meta = {k: (dt, shape) for k, (fd, _, dt, shape) in self.files.items()}
    for fd, _, _, _ in self.files.values():
      os.close(fd)
    self.files = {}
    return meta

  def _merge_parts(self, meta: dict) -> None:
    """Each process's part files and indices -> process 0 copies them into the final files, block by block."""
    np.save(self.dir / f".index.part-{self.pid}-of-{self.count}.npy",
            np.concatenate(self.part_index) if self.part_index else np.zeros(0, np.int64))
    parallel.sync_processes("scoring pass: parts written")
    if self.pid != 0:
      return
    for k, (dt, shape) in meta.items():
      tmp = self._path(k, ".tmp.npy")
      fd, header = _create_npy(tmp, dt, (self.n,) + shape)
      try:
        for p in range(self.count):
          index = np.load(self.dir / f".index.part-{p}-of-{self.count}.npy")
          row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
          with open(self._part(k, p), "rb") as f:
            for s in range(0, len(index), MERGE_BLOCK_ROWS):
              block = index[s:s + MERGE_BLOCK_ROWS]
              rows = np.frombuffer(f.read(len(block) * row_bytes), dt).reshape((len(block),) + shape)
              _write_runs(fd, header, block, rows)
      finally:
        os.close(fd)
      os.replace(tmp, self._path(k))
    for p in range(self.count):
      (self.dir / f".index.part-{p}-of-{self.count}.npy").unlink()
      for k in meta:
        self._part(k, p).unlink()


def _create_npy(path: Path, dtype, shape) -> tuple[int, int]:
  """An ``.npy`` file of ``shape`` (sparse: nothing but its header written) -> (a descriptor to write its data
  through, the header's length)."""
  with open(path, "wb") as f:
    npy_format.write_array_header_1_0(f, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                          "fortran_order": False, "shape": tuple(int(d) for d in shape)})
    header = f.tell()
    f.truncate(header + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
  return os.open(path, os.O_WRONLY), header


def _write_runs(fd: int, header: int, index: np.ndarray, rows: np.ndarray) -> None:
  """Writes ``rows[i]`` at row ``index[i]`` of the array after ``header``, one write per run of consecutive
  indices (a batch of the eval order is one run)."""
  if not len(index):
    return
  order = np.argsort(index, kind="stable")
  index, rows = index[order], np.ascontiguousarray(rows[order])
  row_bytes = rows[0].nbytes
  breaks = np.flatnonzero(np.diff(index) != 1) + 1
  for lo, hi in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(index)]])):
    os.pwrite(fd, rows[lo:hi].tobytes(), header + int(index[lo]) * row_bytes)


def score_batches(fn, params, text, batches: Iterable[dict], mesh, num_examples: int, *,
                  directory: Optional[Path] = None) -> dict[str, np.ndarray]:
  """Runs ``fn(params, text, batch)`` (``Detector.jit_score_images``) over host-local ``batches``; returns the
  per-example scalars (host arrays) and the row arrays (``RowFiles``), all [N, ...] in index order. Each index
  must be scored exactly once."""
  scalars: dict[str, np.ndarray] = {}
  counts = np.zeros(num_examples, np.int64)
  files = RowFiles(directory, num_examples)

  def drain(out):
    host = jax.device_get({k: v for k, v in out.items() if k not in detect_step.ROW_ARRAYS and k not in LOCAL})
    valid = np.asarray(host.pop("valid"), bool)
    index = np.asarray(host.pop("index"))[valid]
    np.add.at(counts, index, 1)
    for k, v in host.items():
      if k not in scalars:
        scalars[k] = np.zeros((num_examples,) + np.shape(v)[1:], np.asarray(v).dtype)
      scalars[k][index] = np.asarray(v)[valid]
    rows = {k: v for k, v in out.items() if k in detect_step.ROW_ARRAYS}
    if rows:
      local_valid = local_rows(out["local_valid"])
      local_index = local_rows(out["local_index"])[local_valid]
      files.write(local_index, {k: local_rows(v)[local_valid] for k, v in rows.items()})

  pending = None
  for local in batches:
    out = fn(params, text, parallel.shard_batch(local, mesh))  # queued; the previous batch is read meanwhile
    if pending is not None:
      drain(pending)
    pending = out
  if pending is not None:
    drain(pending)
  _check_coverage(counts)
  arrays = files.finish()
  return {**scalars, **arrays}


def _check_coverage(counts: np.ndarray) -> None:
  if (counts != 1).any():
    missing, dup = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    raise RuntimeError(f"scoring pass covered the dataset incorrectly: {len(missing)} example(s) missing "
                       f"(e.g. {missing[:5].tolist()}), {len(dup)} seen more than once (e.g. {dup[:5].tolist()})")
