"""Orbax checkpoints per stage, and the guard that keeps one workdir to one configuration.

Each training stage saves its whole train state -- a plain pytree of arrays -- under
``workdir/<stage output>/checkpoints/<step>`` (``workdir/baselines/<name>/checkpoints`` for a training baseline)
every ``every_steps`` steps, asynchronously, plus a final save. Orbax
writes into a temporary directory and renames it when complete, so a process killed mid-save leaves the
previous checkpoint as the latest one; rerunning the same command restores it and continues.

``workdir/config.json`` records the configuration of the run. A later run in the same workdir with a
different configuration is refused with the list of differences when any stage output that the changed
fields would invalidate already exists, so no earlier result is overwritten or silently mixed with a new
one. Changes that only affect stages that have not produced anything yet are accepted (e.g. trying
another ``adapt`` setting on a finished detection), and so are fields that do not change results
(logging intervals, the mesh). Which outputs a section's change invalidates comes from the stage graph
(deft_jax/stages.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from deft_jax import parallel, stages
from deft_jax.errors import CorruptCheckpointError, WorkdirConflictError  # noqa: F401 (re-exported)
from deft_jax.errors import DiskFullError, writing

# Fields (config sections, or dotted fields) that may change between a run and its resumption without changing
# results: the phase-1 text path's chunking and prefix sharing give the same features to rounding (and a run
# recorded before prefix sharing existed resumes with it).
RESUMABLE_FIELDS = ("stages", "log_every_steps", "checkpoint_every_steps", "report", "mesh", "sharding_rules",
                    "detect.text_chunk", "detect.text_prefix_sharing")
CONFIG_FILE = "config.json"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  if isinstance(d, (list, tuple)):
    return {prefix: json.loads(json.dumps(d, default=str))}
  return {prefix: d}


def config_to_dict(config) -> dict:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(d, default=str))


def check_workdir(workdir: str | Path, config, *, record: bool = True) -> None:
  """Records the config in a new workdir (``record=False``: later, by :func:`record_config`); refuses a workdir
  whose recorded config differs."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / CONFIG_FILE
  new = config_to_dict(config)
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise WorkdirConflictError(f"{path} is not valid JSON ({e}); this workdir was not written by deft_jax "
                                 "or is damaged. Use a new --workdir.") from e
    a, b = _flatten(old), _flatten(new)
    diffs = [k for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k) and k.split(".")[0] not in RESUMABLE_FIELDS and k not in RESUMABLE_FIELDS]
    extra = _recorded_reads(workdir)
    affected = sorted({o for k in diffs for o in stages.stale_outputs(k.split(".")[0], extra)})
    existing = [o for o in affected if (workdir / o).exists() and any((workdir / o).iterdir())]
    if existing:
      lines = "\n  ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diffs[:30])
      raise WorkdirConflictError(
          f"workdir {workdir} holds a run with a different configuration; refusing to overwrite it.\n  {lines}\n"
          f"These changes would invalidate its existing outputs: {', '.join(existing)}.\n"
          "Use a new --workdir (or delete this one) to start a different run.")
    if diffs:
      logging.info("config changes affect only stages without outputs yet: %s", ", ".join(diffs))
  if record:
    record_config(workdir, config)


def record_config(workdir: str | Path, config) -> None:
  """Writes the run's config into its workdir (what :func:`check_workdir` compares the next run with)."""
  write_json(Path(workdir) / CONFIG_FILE, config_to_dict(config), sort_keys=True)


def _recorded_reads(workdir: Path) -> dict[str, set]:
  """{output: the config sections its subfolders recorded reading (stages.READS_FILE)}."""
  out: dict[str, set] = {}
  for o in stages.GRAPH:
    for f in Path(workdir, o.name).glob(f"*/{stages.READS_FILE}"):
      try:
        out.setdefault(o.name, set()).update(json.loads(f.read_text()))
      except (OSError, json.JSONDecodeError):
        continue  # an unreadable record: only the graph's own reads count for that folder
  return out


class StageCheckpointer:
  """Periodic asynchronous checkpoints of one stage's train state."""

  def __init__(self, directory: str | Path, *, every_steps: int, max_to_keep: int = 2,
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, int(every_steps)), max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def restore(self, abstract_state) -> Optional[Any]:
    """The latest state (with the shardings of ``abstract_state``), or None when there is none."""
    step = self._mngr.latest_step()
    if step is None:
      return None
    try:
      state = self._mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # orbax / tensorstore raise many types for damaged files
      raise CorruptCheckpointError(
          f"cannot restore checkpoint step {step} in {self.directory}: {type(e).__name__}: {e}\n"
          "It may be damaged or come from another model. Move it away to restart this stage from its last "
          "good checkpoint (or from scratch); nothing has been deleted.") from e
    logging.info("restored %s at step %d", self.directory, step)
    return state

  def should_save(self, step: int) -> bool:
    """Whether :meth:`save` at ``step`` (not forced) would write a checkpoint."""
    return self._mngr.should_save(step)

  # A full disk: a save is refused before Orbax starts writing when the state's bytes exceed the free space (a
  # DiskFullError naming the directory, and Orbax's threads never fail); one that fills the disk anyway surfaces
  # in that save, or (asynchronous saves) in the next save or the wait, as the same error. Orbax writes each step
  # into a temporary directory renamed only when complete, so the previous checkpoints stay whole.
  def save(self, step: int, state, *, force: bool = False) -> bool:
    if force or self._mngr.should_save(step):
      self.wait()  # Orbax would wait for the previous save here too; its bytes are then on the disk
      _check_free_space(self.directory, _nbytes(state), f"the step-{step} checkpoint in")
    with writing(self.directory, "a checkpoint in"):
      return self._mngr.save(step, args=ocp.args.StandardSave(state), force=force)

  def wait(self) -> None:
    with writing(self.directory, "a checkpoint in"):
      self._mngr.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._mngr.close()

  def __enter__(self) -> "StageCheckpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()  # also when training stops with an error: pending saves complete, threads end


def _nbytes(tree) -> int:
  """The bytes of the arrays of ``tree`` (uncompressed: about what a checkpoint of random weights takes)."""
  return int(sum(int(getattr(x, "nbytes", 0) or 0) for x in jax.tree_util.tree_leaves(tree)))


def _check_free_space(directory: Path, needed: int, what: str) -> None:
  """DiskFullError when the file system of ``directory`` has fewer than ``needed`` bytes free."""
  existing = next(p for p in (directory, *directory.parents) if p.exists())
  free = shutil.disk_usage(existing).free
  if free < needed:
    raise DiskFullError(f"no space left on device for {what} {directory}: it needs about {needed / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB are free. Free some space and rerun the same command (it resumes "
                        "from the last complete checkpoint; the files written before are unchanged)")


def _write_atomically(path: str | Path, suffix: str, write) -> None:
  """``write(tmp)`` into a temporary sibling of ``path`` (ending in ``suffix``), then renamed into place, on process
  0 only (the other processes of a multi-host run hold the same values). Collective: every process calls it, and
  all return once the file is in place, so that any of them may read it next (e.g. phase 2 reading the prompts
  phase 1 saved) and none reads a file that does not exist yet."""
  path = Path(path)
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    try:
      with writing(path):
        write(tmp)
        tmp.replace(path)
    finally:
      tmp.unlink(missing_ok=True)  # a write that failed half-way leaves nothing behind
  parallel.sync_processes(f"wrote {path.name}")


def save_npz(path: str | Path, arrays: dict) -> None:
  """Writes ``arrays`` to ``path`` atomically, on process 0 only; called by every process (a barrier)."""
  _write_atomically(path, ".tmp.npz", lambda tmp: np.savez(tmp, **arrays))


def save_npy(path: str | Path, array) -> None:
  """Writes one array to ``path`` (.npy, memory-mappable) atomically, on process 0 only; called by every process
  (a barrier)."""
  _write_atomically(path, ".tmp.npy", lambda tmp: np.save(tmp, np.asarray(array)))


def write_json(path: str | Path, obj, *, sort_keys: bool = False, default=None) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically, on process 0 only; called by every process (a
  barrier)."""
  _write_atomically(path, ".tmp", lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys,
                                                                        default=default)))


def load_npz(path: str | Path) -> dict:
  """All arrays of an .npz file, read eagerly (never unpickles)."""
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
