"""Stopping a run cleanly: preemption (SIGTERM) at a step every process agrees on, and one process's failure
told to the others.

Preemption. Cloud TPU VMs and SLURM (``--signal``, preemption, ``scancel``) send SIGTERM some time before they
kill. :func:`install_sigterm_handler` (main.py) makes SIGTERM only set a flag; the step loop (loop.py) asks
:func:`preemption_requested` at its step boundaries. With several processes the flags are combined by a tiny
all-gather every ``DEFT_JAX_PREEMPTION_CHECK_STEPS`` steps (default 10; by default every step with one process,
where it costs nothing), so all processes see the request at the same step, even when only one of them got the signal.
Then every process saves the stage's checkpoint at that step and raises :class:`Preempted`; main.py prints one
line and exits with :data:`PREEMPTED_EXIT` (75, EX_TEMPFAIL). Rerunning the same command resumes from that step,
with the outputs of an uninterrupted run.

A process that fails (a DeftError only it meets: a bad image only it reads, a full disk only it sees; or a bug)
announces it in the coordination service's key-value store (:func:`announce_failure`) before it exits. Every
other process watches that store (:func:`start_failure_watch`, a daemon thread): it prints ``deft_jax: error:
process i of N stopped: REASON`` and exits with the failing process's status at once, wherever it is waiting.
A process that dies without a word (SIGKILL, out of memory) is noticed by the others when their next collective
fails (gloo, NCCL) or by JAX's heartbeat; :func:`explain_peer_failure` gives the line they print then.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

import jax
import numpy as np

from deft_jax.parallel.multihost import HEARTBEAT_TIMEOUT_ENV

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): try again later, i.e. rerun the same command
CHECK_STEPS_ENV = "DEFT_JAX_PREEMPTION_CHECK_STEPS"
DEFAULT_CHECK_STEPS = 10
FAILED_DIR, ACK_DIR, EXIT_DIR = "deft_jax/failed/", "deft_jax/acknowledged/", "deft_jax/exiting/"
ALIVE_DIR = "deft_jax/alive/"
DEFAULT_HEARTBEAT_TIMEOUT = 100  # JAX's
ACK_TIMEOUT = 10.0  # how long a failing process waits for the others to have read its reason
WATCH_INTERVAL = 0.5
WATCH_GRACE = 1.0  # a failure every process meets (a config error) is reported by each itself
PEER_GRACE = 3.0  # after a failed collective: how long to wait for the failing process's announcement

_sigterm = threading.Event()
_watch_stop = threading.Event()
_stopping = threading.Lock()


class Preempted(Exception):
  """Every process saved the stage's checkpoint at ``step`` after a SIGTERM: rerun the same command."""

  def __init__(self, stage: str, step: int, total: int):
    super().__init__(f"preempted at {stage} step {step} of {total}; checkpoint saved, rerun the same command to "
                     "resume")
    self.stage, self.step, self.total = stage, step, total


def install_sigterm_handler() -> None:
  """From now on SIGTERM only asks the step loop to save and stop (main thread only, as Python requires). A bad
  DEFT_JAX_PREEMPTION_CHECK_STEPS stops the run here, before any stage."""
  check_every()
  signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame):  # pylint: disable=unused-argument
  if not _sigterm.is_set():
    logging.warning("SIGTERM received: every process saves a checkpoint at the next common step and stops")
  _sigterm.set()


@functools.lru_cache(maxsize=None)
def check_every() -> int:
  """Steps between two preemption checks: DEFT_JAX_PREEMPTION_CHECK_STEPS, read once (the loop asks every step)."""
  value = os.environ.get(CHECK_STEPS_ENV, "").strip()
  try:
    n = int(value) if value else (DEFAULT_CHECK_STEPS if jax.process_count() > 1 else 1)
  except ValueError:
    n = 0
  if n < 1:
    from deft_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"{CHECK_STEPS_ENV}={value!r} must be an integer >= 1")
  return n


def preemption_requested(step: int) -> bool:
  """Whether any process of the run got SIGTERM; the same answer on every process at the same ``step`` (a
  collective every check_every() steps when there are several processes: all must call it at every step)."""
  if step % check_every():
    return False
  if jax.process_count() == 1:
    return _sigterm.is_set()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([_sigterm.is_set()], np.int32))
  return bool(np.asarray(flags).any())


def _client():
  """JAX's coordination-service client; None in a single-process run."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def multi_process() -> bool:
  return _client() is not None


def failing() -> None:
  """This process handles its own error now: the watch no longer stops it with another process's reason."""
  _watch_stop.set()


def _entries(client, directory: str) -> dict[int, str]:
  return {int(k.rsplit("/", 1)[-1]): v for k, v in client.key_value_dir_get(directory)}


def stop(line: Optional[str], code: int, dead: tuple = ()) -> None:
  """Prints ``deft_jax: error: <line>`` (unless None) and ends this process at once with ``code``: with several
  processes JAX's shutdown at exit would wait for the one that failed."""
  if not _stopping.acquire(blocking=False):  # another thread of this process is ending it already
    while True:
      time.sleep(60)
  if line is not None:
    print(f"deft_jax: error: {line}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  sys.stderr.flush()
  client = _client()
  if client is None:
    sys.exit(code)
  _watch_stop.set()
  me = jax.process_index()
  try:
    client.key_value_set(f"{EXIT_DIR}{me}", str(code), allow_overwrite=True)
    if me == 0:  # the coordination service lives here: the others end first, else JAX aborts them
      _wait_for(lambda: set(_entries(client, EXIT_DIR)) >= set(range(jax.process_count())) - set(dead))
      time.sleep(0.5)
  except Exception:  # noqa: BLE001 -- the coordinator is gone
    pass
  os._exit(code)  # pylint: disable=protected-access


def _wait_for(done, timeout: float = ACK_TIMEOUT) -> bool:
  deadline = time.monotonic() + timeout
  while not done():
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.1)
  return True


def _peer_line(pid: int, record: str) -> tuple[str, int]:
  info = json.loads(record)
  return f"process {pid} of {jax.process_count()} stopped: {info['reason']}", int(info["code"])


def start_failure_watch() -> None:
  """A daemon thread that stops this process with one line as soon as another process of the run announces a
  failure (:func:`announce_failure`) or stops beating for a quarter of JAX's heartbeat timeout (it died: JAX
  itself would abort this process a little later, without a word). Nothing with one process."""
  client = _client()
  if client is None:
    return
  me, count = jax.process_index(), jax.process_count()
  dead_after = _dead_after()

  def watch():
    beat, last = 0, {p: (None, time.monotonic()) for p in range(count) if p != me}
    while not _watch_stop.wait(WATCH_INTERVAL):
      try:
        beat += 1
        client.key_value_set(f"{ALIVE_DIR}{me}", str(beat), allow_overwrite=True)
        failed = {p: r for p, r in _entries(client, FAILED_DIR).items() if p != me}
        alive, done = _entries(client, ALIVE_DIR), _entries(client, EXIT_DIR)
      except Exception:  # noqa: BLE001 -- the coordinator is gone: JAX's own error handling stops this process
        return
      now = time.monotonic()
      for p, (value, _) in last.items():
        if alive.get(p) != value or p in done:
          last[p] = (alive.get(p), now)
      dead = [p for p, (_, since) in last.items() if now - since > dead_after]
      if (failed or dead) and not _watch_stop.wait(WATCH_GRACE):  # unless this process fails by itself meanwhile
        if failed:
          line, code = _peer_line(min(failed), failed[min(failed)])
        else:
          line, code = (f"process {dead[0]} of {count} stopped: it died (no sign of life for {dead_after:.0f} s: "
                        "killed, out of memory, or its host is gone). Rerun the same command on every host to "
                        "resume from the last checkpoint."), 1
        try:
          client.key_value_set(f"{ACK_DIR}{me}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001
          pass
        stop(line, code, dead=tuple(dead))

  threading.Thread(target=watch, name="deft_jax-failure-watch", daemon=True).start()


def _dead_after() -> float:
  """Seconds of silence after which a process counts as dead: a quarter of JAX's heartbeat timeout, since JAX
  itself may abort the others from half of it on (its last heartbeat can be half a timeout old)."""
  value = os.environ.get(HEARTBEAT_TIMEOUT_ENV, "").strip()
  return (int(value) if value.isdigit() and int(value) > 0 else DEFAULT_HEARTBEAT_TIMEOUT) / 4


def finished(code: int = 0) -> None:
  """This process ends normally (or preempted, with every other): the others' watch must not take it for dead."""
  _watch_stop.set()
  client = _client()
  if client is not None:
    try:
      client.key_value_set(f"{EXIT_DIR}{jax.process_index()}", str(code), allow_overwrite=True)
    except Exception:  # noqa: BLE001
      pass


def announce_failure(reason: str, code: int) -> None:
  """Tells the other processes that this one stops (``reason``, exit status ``code``) and waits, up to
  ACK_TIMEOUT seconds, until each has read it (or failed itself). Nothing with one process."""
  client = _client()
  if client is None:
    return
  _watch_stop.set()
  me, count = jax.process_index(), jax.process_count()
  try:
    client.key_value_set(f"{FAILED_DIR}{me}", json.dumps({"reason": " ".join(str(reason).split()), "code": code}))
    _wait_for(lambda: set(_entries(client, ACK_DIR)) | set(_entries(client, FAILED_DIR))
              >= set(range(count)) - {me})
  except Exception:  # noqa: BLE001 -- the coordinator is gone: the others are stopped by JAX itself
    return


def explain_peer_failure(error: BaseException) -> Optional[tuple[str, int]]:
  """After ``error`` on this process of a multi-process run: the line (and exit status) that names another
  process that failed or died, if this error comes from it; None if this process itself is the cause. A failed
  collective waits for the watch to tell which process died (up to a quarter of JAX's heartbeat timeout)."""
  client = _client()
  if client is None:
    return None
  me, count = jax.process_index(), jax.process_count()
  collective = _is_collective_failure(error)
  wait = PEER_GRACE + (_dead_after() if collective else 0)
  deadline = time.monotonic() + wait
  while time.monotonic() < deadline:
    try:
      failed = {p: r for p, r in _entries(client, FAILED_DIR).items() if p != me}
    except Exception:  # noqa: BLE001
      failed = {}
    if failed:
      return _peer_line(min(failed), failed[min(failed)])
    time.sleep(0.2)  # meanwhile the watch may name the process that died, and stop this one
  _watch_stop.set()
  if not collective:
    return None
  first = (str(error).strip().splitlines() or [""])[0][:300]
  return (f"another of the {count} processes stopped (this process, {me}, lost it in a collective: "
          f"{type(error).__name__}: {first}). Rerun the same command on every host to resume from the last "
          "checkpoint."), 1


def _is_collective_failure(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}".lower()
  return any(w in text for w in ("gloo", "nccl", "connection", "peer", "socket", "collective", "barrier",
                                 "deadline", "unavailable"))
