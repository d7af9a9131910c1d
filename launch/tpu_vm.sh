#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice) with gcloud: create, set up, run, delete.
#
#   launch/tpu_vm.sh all    --name deft --zone us-central2-b --accelerator-type v4-32 \
#                           --config configs/webvision.py --workdir /mnt/shared/deft/webvision
#   launch/tpu_vm.sh run    --name deft --zone us-central2-b --config ... --workdir /mnt/shared/... -- --config.seed=1
#   launch/tpu_vm.sh delete --name deft --zone us-central2-b
#
# Steps: create (the VM), setup (copy this repo to every worker, install Python >= 3.11, jax[tpu]
# and requirements.txt into ~/deft_venv), run (the same python -m deft_jax.main on every worker at
# once; jax.distributed.initialize() finds the other hosts itself), all (= create, setup, run).
# Options: --name (deft-tpu) --zone (us-central2-b) --accelerator-type (v4-8) --version (derived
# from the accelerator) --project (gcloud default) --config (configs/demo.py) --workdir (required
# for run; on multi-host slices a directory every worker mounts, see launch/README.md) --spot
# --detach (run in the background on the workers, log in ~/deft_run.log). Everything after "--"
# goes to deft_jax.main. DRY_RUN=1 prints commands.
# Rerunning "run" with the same arguments resumes from the checkpoint in --workdir.
set -euo pipefail

STEP="${1:-help}"
if [[ $# -gt 0 ]]; then shift; fi
NAME=deft-tpu ZONE=us-central2-b ACCEL=v4-8 VERSION="" PROJECT="" CONFIG=configs/demo.py WORKDIR=""
SPOT=0 DETACH=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator-type) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --detach) DETACH=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done

if [[ -z "${VERSION}" ]]; then
  case "${ACCEL}" in  # the runtime images Google lists for JAX, per TPU generation
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi

run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="${ZONE}")
if [[ -n "${PROJECT}" ]]; then WHERE+=(--project="${PROJECT}"); fi

on_all_workers() {  # runs one shell command line on every worker of the slice
  run "${GCLOUD[@]}" ssh "${NAME}" "${WHERE[@]}" --worker=all --command="$1"
}

create() {
  local extra=()
  if [[ "${SPOT}" == "1" ]]; then extra+=(--spot); fi
  # ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error in the bash 3.2 of macOS laptops.
  run "${GCLOUD[@]}" create "${NAME}" "${WHERE[@]}" --accelerator-type="${ACCEL}" --version="${VERSION}" \
    ${extra[@]+"${extra[@]}"}
}

setup() {
  local repo tarball
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tarball="$(mktemp -d)/deft_jax.tar.gz"
  run tar -C "${repo}" --exclude=.git --exclude=.venv --exclude=venv --exclude='workdir*' \
    --exclude='__pycache__' --exclude='*.safetensors' -czf "${tarball}" .
  run "${GCLOUD[@]}" scp "${tarball}" "${NAME}:~/deft_jax.tar.gz" "${WHERE[@]}" --worker=all
  rm -rf "$(dirname "${tarball}")"
  on_all_workers "rm -rf ~/deft_jax && mkdir -p ~/deft_jax && tar -xzf ~/deft_jax.tar.gz -C ~/deft_jax \
&& bash ~/deft_jax/launch/tpu_vm.sh _worker_setup"
}

worker_setup() {  # on a worker: the TPU images ship Python 3.10, JAX needs >= 3.11
  if ! command -v python3.11 >/dev/null; then
    sudo apt-get update -q && sudo apt-get install -y -q software-properties-common
    sudo add-apt-repository -y ppa:deadsnakes/ppa
    sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv
  fi
  if [[ ! -x ~/deft_venv/bin/python ]]; then python3.11 -m venv ~/deft_venv; fi
  ~/deft_venv/bin/python -m pip install --upgrade pip
  ~/deft_venv/bin/python -m pip install -r ~/deft_jax/requirements.txt "jax[tpu]"
}

run_main() {
  if [[ -z "${WORKDIR}" ]]; then echo "run needs --workdir (a directory every worker mounts)" >&2; exit 2; fi
  if [[ "${WORKDIR}" == *://* ]]; then
    echo "--workdir ${WORKDIR}: deft_jax takes a directory, not a URL; mount shared storage on every worker" \
      "(e.g. Filestore NFS) and pass its path (launch/README.md)" >&2
    exit 2
  fi
  local chips="${ACCEL##*-}"
  if [[ "${chips}" =~ ^[0-9]+$ && "${chips}" -gt 8 ]]; then
    echo "note: ${ACCEL} spans several hosts: ${WORKDIR} must be on storage every worker mounts at that path" \
      "(a local disk stops the run with 'not shared', see launch/README.md)" >&2
  fi
  local cmd
  cmd="cd ~/deft_jax && ~/deft_venv/bin/python -m deft_jax.main $(printf '%q ' --config "${CONFIG}" --workdir "${WORKDIR}" ${EXTRA[@]+"${EXTRA[@]}"})"
  if [[ "${DETACH}" == "1" ]]; then
    cmd="nohup bash -c $(printf '%q' "${cmd}") > ~/deft_run.log 2>&1 < /dev/null &"
  fi
  on_all_workers "${cmd}"
  echo "when done, delete the VM: $0 delete --name ${NAME} --zone ${ZONE}" >&2
}

case "${STEP}" in
  create) create ;;
  setup) setup ;;
  run) run_main ;;
  all) create; setup; run_main ;;
  delete) run "${GCLOUD[@]}" delete "${NAME}" "${WHERE[@]}" --quiet ;;
  _worker_setup) worker_setup ;;
  help|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' ;;
  *) echo "unknown step '${STEP}'; expected create, setup, run, all or delete" >&2; exit 2 ;;
esac
