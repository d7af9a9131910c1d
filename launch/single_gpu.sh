#!/usr/bin/env bash
# One machine, one process, every local GPU: creates a virtualenv once, then runs deft_jax.main.
#
#   launch/single_gpu.sh [CONFIG] [WORKDIR] [-- EXTRA_FLAGS...]
#   launch/single_gpu.sh configs/cifar100n.py workdirs/cifar100n -- --config.detect.epochs=3
#
# Environment (all optional):
#   VENV=.venv          virtualenv to create/use (created on first run, reused afterwards)
#   JAX_CUDA=cuda12     jax[...] extra: cuda12 or cuda13 (must match the host's NVIDIA driver)
#   PYTHON=python3      interpreter that creates the venv (Python >= 3.11)
#   SETUP_ONLY=1        install and stop (e.g. to prepare the venv on a shared FS for SLURM)
#   DRY_RUN=1           print the commands instead of running them
# Rerunning the same command resumes from the last checkpoint in WORKDIR.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${1:-configs/demo.py}"
CONFIG_NAME="$(basename "${CONFIG%%:*}" .py)"
WORKDIR="${2:-workdirs/${CONFIG_NAME}}"
shift "$(( $# < 2 ? $# : 2 ))"
if [[ "${1:-}" == "--" ]]; then shift; fi

VENV="${VENV:-${REPO_ROOT}/.venv}"
JAX_CUDA="${JAX_CUDA:-cuda12}"
PYTHON="${PYTHON:-python3}"

run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

case "${JAX_CUDA}" in
  cuda12|cuda13) ;;
  *) echo "JAX_CUDA must be cuda12 or cuda13, got '${JAX_CUDA}'" >&2; exit 2 ;;
esac

cd "${REPO_ROOT}"
# The stamp records what was installed, so a changed requirements.txt or CUDA flavour reinstalls.
STAMP="${VENV}/.deft_jax_installed_${JAX_CUDA}"
if [[ ! -f "${STAMP}" || requirements.txt -nt "${STAMP}" ]]; then
  if [[ ! -x "${VENV}/bin/python" ]]; then run "${PYTHON}" -m venv "${VENV}"; fi
  run "${VENV}/bin/python" -m pip install --upgrade pip
  run "${VENV}/bin/python" -m pip install -r requirements.txt "jax[${JAX_CUDA}]"
  run touch "${STAMP}"
fi
if [[ "${SETUP_ONLY:-0}" == "1" ]]; then exit 0; fi

run "${VENV}/bin/python" -m deft_jax.main --config "${CONFIG}" --workdir "${WORKDIR}" "$@"
