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
# print warnings and errors only. Rerunning the same command resumes from the last checkpoint; when a worker is
# preempted (the run saves and exits 75) this script reruns it, up to MAX_RESTARTS times (default 20), once the
# slice is back. Any other non-zero status (a bad flag: 2) ends the script with that status.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE MODEL CONFIG WORKDIR [--config.a.b=value ...]}
ZONE=${2:?zone}
MODEL=${3:?model (lalrm, vae, camera-dit)}
CONFIG=${4:?config file}
WORKDIR=${5:?workdir}
shift 5
REPO=${REPO:-~/wonderland_jax}
printf -v EXTRA ' %q' "$@"
MAX_RESTARTS=${MAX_RESTARTS:-20}
for attempt in $(seq 0 "$MAX_RESTARTS"); do
  status=0
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
    "cd $REPO && wonderland train $MODEL --config $CONFIG --workdir $WORKDIR$EXTRA" || status=$?
  [ "$status" -eq 75 ] || exit "$status"
  echo "wonderland: preempted (attempt $attempt); resuming in 60 s"
  sleep 60
done
echo "wonderland: still preempted after $MAX_RESTARTS restarts; rerun this script to resume" >&2
exit 75
