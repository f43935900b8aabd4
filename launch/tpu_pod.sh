#!/bin/bash
# Training on a Cloud TPU pod slice: the same command on every worker; JAX detects the workers
# (wonderland_jax.parallel.initialize), so no coordinator flags are needed.
#
#   launch/tpu_pod.sh my-v5p-64 us-east5-a lalrm configs/lalrm_tiny.py /mnt/shared/runs/lalrm_tiny_pod \
#       --config.parallel.mesh=fsdp=-1 --config.train.batch_size=32
#   launch/tpu_pod.sh my-v5p-256 us-east5-a camera-dit configs/camera_dit_5b.py /mnt/shared/runs/camera_dit \
#       --config.parallel.mesh=fsdp=64,tensor=2 --config.parallel.dcn=data=2 --config.base.attention=splash
#
# Each worker needs this repository installed (`pip install -e '.[tpu]'` in REPO) and the workdir on a
# filesystem all workers share (e.g. a Filestore / NFS mount). Logs of worker 0 carry the progress; the others
# print warnings and errors only. Rerunning the same command resumes from the last checkpoint.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE MODEL CONFIG WORKDIR [--config.a.b=value ...]}
ZONE=${2:?zone}
MODEL=${3:?model (lalrm, vae, camera-dit)}
CONFIG=${4:?config file}
WORKDIR=${5:?workdir}
shift 5
REPO=${REPO:-~/wonderland_jax}
printf -v EXTRA ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $REPO && wonderland train $MODEL --config $CONFIG --workdir $WORKDIR$EXTRA"
