r"""deft_jax: find noisy labels with a vision-language model, then fine-tune on the clean ones.

  python -m deft_jax.main --config configs/cub200.py --workdir /tmp/cub200
  python -m deft_jax.main --config configs/cifar100.py:noise=idn,ratio=0.3 --workdir /tmp/c100 \
      --config.detect.epochs=5

Rerunning the same command in the same workdir resumes where it stopped. On a CPU-only host the process
gives glibc's malloc transparent huge pages (fewer page faults, faster steps), re-executing itself once to do
so; DEFT_JAX_CPU_MALLOC=off turns that off (deft_jax/cpu_memory.py). Compiled steps are cached in
~/.cache/deft_jax/xla (DEFT_JAX_COMPILATION_CACHE=off turns that off).
"""

import logging
import os
import sys
import traceback

from deft_jax import cpu_memory

# First, before any library starts a thread: XLA:CPU steps stop page-faulting their temporaries (as a command,
# the process may re-execute itself here, once, with glibc's huge-page tunable: deft_jax/cpu_memory.py).
try:
  _MALLOC = cpu_memory.configure(restart=__name__ == "__main__")
except ValueError as _e:
  print(f"deft_jax: error: {_e}", file=sys.stderr)
  sys.exit(2)

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags

from deft_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (input pipelines only): no CPU-feature notes
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # transformers: no "PyTorch was not found"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Configuration file (configs/<name>.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard summaries and the report.")
flags.DEFINE_bool("library_logs", False, "Keep the INFO logs of Orbax, CLU and JAX's backend probing "
                  "(hidden by default; warnings and errors always show).")
flags.mark_flags_as_required(["config", "workdir"])

_QUIET = ("/orbax/", "/clu/", "/jax/_src/xla_bridge.py")


class _LibraryInfoFilter(logging.Filter):
  """Drops INFO records from libraries that log every checkpoint save; the run's own progress stays."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(q in record.pathname for q in _QUIET)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (every setting is a --flag or a --config.<field>=value)")
  if not FLAGS.library_logs:
    for handler in logging.getLogger().handlers:
      handler.addFilter(_LibraryInfoFilter())
  from deft_jax import native_stderr
  with native_stderr.without_startup_notes():  # TensorFlow's native start-up notes (oneDNN), not for the user
    import jax  # after flag parsing, so that --help is fast

    from deft_jax import parallel, run
  from deft_jax.parallel import faults
  from deft_jax.errors import USER_ERRORS, is_disk_full

  try:
    parallel.distributed_init_if_needed()  # before anything computes: a multi-process run joins its peers
    faults.install_sigterm_handler()  # after JAX's own (jax.distributed installs one): ours decides
    faults.start_failure_watch()  # another process's failure stops this one with its reason
    logging.info("JAX %s, process %d/%d, %d local / %d global devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[:8])
    cache = _use_compilation_cache(jax)
    if cache:
      logging.info("XLA compilation cache: %s (%s=off turns it off)", cache, CACHE_ENV)
    if _MALLOC:
      logging.info("host malloc: %s (%s=%s)", _MALLOC_WORDS[_MALLOC], cpu_memory.ENV, cpu_memory.mode())
    run.run(FLAGS.config, FLAGS.workdir)
    faults.finished(0)
  except faults.Preempted as e:  # every process saved a checkpoint at the same step
    faults.finished(faults.PREEMPTED_EXIT)
    print(f"deft_jax: {e}", file=sys.stderr, flush=True)
    sys.exit(faults.PREEMPTED_EXIT)
  except USER_ERRORS as e:  # the input is wrong, not the code: one line, no traceback
    _stop_for_the_user(str(e))
  except Exception as e:  # noqa: BLE001 -- a bug here, a full disk, or another process's failure
    if is_disk_full(e):  # met by a writer without its own DiskFullError
      _stop_for_the_user(f"no space left on device ({type(e).__name__}: {str(e).strip().splitlines()[0]}): free "
                         "some space and rerun the same command (it resumes)")
    if not faults.multi_process():
      raise
    peer = faults.explain_peer_failure(e)  # meanwhile the watch may stop this process with a peer's reason
    if peer:
      faults.stop(*peer)
    traceback.print_exc()
    faults.announce_failure(f"{type(e).__name__}: {e} (a bug: its traceback is in that process's log)", 1)
    faults.stop(None, 1)


_MALLOC_WORDS = {"hugepages": "glibc's, with transparent huge pages", "kept": "one heap, never trimmed"}
CACHE_ENV = "DEFT_JAX_COMPILATION_CACHE"  # a directory (default ~/.cache/deft_jax/xla), or "off"


def _use_compilation_cache(jax) -> str:
  """JAX's persistent compilation cache: a step compiled once (in an earlier stage, or an earlier run: a
  resumed or repeated command) is read back instead of compiled again. $JAX_COMPILATION_CACHE_DIR, when set,
  wins (JAX reads it itself); else $DEFT_JAX_COMPILATION_CACHE or ~/.cache/deft_jax/xla, kept under 2 GiB
  (least recently used entries go first)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  where = os.environ.get(CACHE_ENV, "").strip() or "~/.cache/deft_jax/xla"
  if where.lower() == "off":
    return ""
  path = os.path.expanduser(where)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", 2 * 2**30)
  return path


def _stop_for_the_user(message: str) -> None:
  """The input is wrong, not the code: one line, exit status 2; the other processes of the run say why they stop."""
  from deft_jax.parallel import faults
  faults.failing()
  print(cli.PREFIX + " ".join(message.split()), file=sys.stderr, flush=True)
  faults.announce_failure(message, 2)
  faults.stop(None, 2)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
