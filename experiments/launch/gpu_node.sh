#!/usr/bin/env bash
# One node, N GPUs: a single process sees every GPU and data-parallelises over all of them;
# no distributed flags are needed. train.batch_size is the global batch (divisible by N).
# Usage: experiments/launch/gpu_node.sh experiments/pix2pix.py [--config.* flags...]
# Pick GPUs with CUDA_VISIBLE_DEVICES=0,1,2,3.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:?usage: $0 experiments/X.py [flags...]}; shift
exec python -m jaxcolor.train --config="$CONFIG" --config.train.compute_dtype=bfloat16 "$@"
