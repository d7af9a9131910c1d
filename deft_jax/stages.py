"""The stage graph, in one place: what each stage writes, which config sections it reads, what it consumes.

``config.stages`` names the stages to run, in STAGE_ORDER; run.py runs them in that order, each stage module
says where its outputs are (``outputs(workdir)``, under the folder named here), and checkpoint.check_workdir
derives from this graph which existing outputs a config change would invalidate.

  pretrain   -> pretrain/    a small CLIP for offline work (model.checkpoint = "pretrain")
  detect     -> detect/      phase 1, DEFT's clean mask
  baselines  -> baselines/   the comparison detectors (config.baselines.methods), with detect
  report     -> report/      the label-issues table and health summary, whenever detection exists
  adapt      -> adapt/       phase 2 on the chosen labels, then the test accuracy ("evaluate")

Every output also depends on the sections every stage reads (data, model, seed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

STAGE_ORDER = ("pretrain", "detect", "adapt", "evaluate")  # the values config.stages takes
COMMON_SECTIONS = ("data", "model", "seed")
READS_FILE = "reads.json"  # in an output's subfolder: the further config sections that subfolder depends on


@dataclasses.dataclass(frozen=True)
class Output:
  """A folder of the workdir that one stage writes."""

  name: str
  reads: tuple  # config sections, beyond COMMON_SECTIONS, whose change makes it stale
  consumes: tuple = ()  # outputs it is computed from (their staleness is its staleness)


GRAPH = (
    Output("pretrain", reads=("pretrain",)),
    Output("detect", reads=("detect",), consumes=("pretrain",)),
    # Each baseline's folder may also record sections it reads (READS_FILE), e.g. the GMM baseline, which
    # trains phase 2's classifier with phase 2's recipe, reads "adapt".
    Output("baselines", reads=("baselines",), consumes=("pretrain",)),
    Output("report", reads=(), consumes=("detect", "baselines")),
    Output("adapt", reads=("adapt",), consumes=("pretrain", "detect", "baselines")),
)
OUTPUTS = {o.name: o for o in GRAPH}


def directory(workdir, name: str) -> Path:
  """The folder of output ``name`` in ``workdir``."""
  if name not in OUTPUTS:
    raise KeyError(f"no stage output {name!r}; known: {list(OUTPUTS)}")
  return Path(workdir) / name


def stale_outputs(section: str, extra_reads: dict | None = None) -> list[str]:
  """The outputs a change of config section ``section`` makes stale (all of them for the common sections).

  ``extra_reads`` maps an output (e.g. "baselines") to the sections its existing subfolders also read (their
  READS_FILE); such a subfolder being stale makes its output, and what consumes it, stale.
  """
  extra = extra_reads or {}
  stale = {o.name for o in GRAPH
           if section in COMMON_SECTIONS or section in o.reads or section in extra.get(o.name, ())}
  changed = True
  while changed:  # everything computed from a stale output is stale
    grown = stale | {o.name for o in GRAPH if any(c in stale for c in o.consumes)}
    changed, stale = grown != stale, grown
  return [o.name for o in GRAPH if o.name in stale]
