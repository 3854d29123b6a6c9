#!/usr/bin/env bash
# A TPU VM slice (e.g. v5litepod-16, 4 hosts): the same command on every worker;
# jax.distributed.initialize() (--distributed) auto-detects the slice.
# The repository and the data must be at the same paths on every worker, and the work dir on
# storage all workers share (a gs:// bucket works for checkpoints and TensorBoard).
# Usage: experiments/launch/tpu_vm.sh TPU_NAME ZONE experiments/pix2pix.py gs://bucket/run [flags]
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?experiments/X.py}; WORKDIR=${4:?work dir}
shift 4
REPO=${REPO:-\$HOME/jaxcolor}  # path of this repository on the workers
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd $REPO && python -m jaxcolor.train --distributed --config=$CONFIG --workdir=$WORKDIR \
    --config.train.compute_dtype=bfloat16 $*"
