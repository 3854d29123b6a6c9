#!/usr/bin/env bash
# Two training processes on one machine, CPU only: what a 2-host pod does, on a laptop.
# Each process gets 2 fake CPU devices (4 in all); process 0 runs the coordinator on a local port.
# Usage: experiments/launch/local_2proc_cpu.sh [experiment.py] [extra --config.* flags...]
# Ctrl-C (or `kill -TERM` of either process) stops both at the same step, after a checkpoint;
# running the script again resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-experiments/lab_gan.py}; shift || true
PORT=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
WORKDIR=${WORKDIR:-runs/local_2proc}
export XLA_FLAGS="--xla_force_host_platform_device_count=2" JAX_PLATFORMS=cpu
pids=()
for i in 0 1; do
  python -m jaxcolor.train --config="$CONFIG" --workdir="$WORKDIR" \
    --coordinator_address="127.0.0.1:$PORT" --num_processes=2 --process_id=$i \
    --config.train.batch_size=8 --config.data.num_workers=0 "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
wait "${pids[@]}"
