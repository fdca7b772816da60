#!/usr/bin/env bash
# Launch `trackgo train` on 1 GPU, 8 GPUs or several nodes.
# Usage: infra/train/launch.sh 1gpu|8gpu|multinode|cpu2 [trackgo train arguments]
#
#   infra/train/launch.sh 1gpu      --config svd-xt-paper model.svd_path=/weights/svd-xt data.shards=/data/shards
#   infra/train/launch.sh 8gpu      --config svd-xt-paper … [--resume]
#   NNODES=4 NODE_RANK=$i MASTER_ADDR=host0 infra/train/launch.sh multinode --config svd-xt-paper …
#   LAUNCHER=torchrun infra/train/launch.sh 8gpu --config …     # torchrun instead of accelerate launch
#   infra/train/launch.sh cpu2 --config tiny-cpu                  # 2 CPU processes (gloo), no GPU needed
#
# Every node runs the same command; global_batch_size stays fixed (accumulation adapts to the
# number of processes). Checkpoints go to run_dir on shared storage; rerun with --resume after a
# preemption: SIGTERM to the launcher (or to every process) makes each process finish its step and
# the run write a checkpoint; the launcher waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default
# here 240, torchrun's own is 30) for that before it kills the processes.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; fi
mode="${1:?usage: launch.sh 1gpu|8gpu|multinode|cpu2 [trackgo train arguments]}"
shift
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-240}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
case "$mode" in
  1gpu) cfg=infra/train/accelerate-1gpu.yaml; GPUS_PER_NODE=1; NNODES=1 ;;
  8gpu) cfg=infra/train/accelerate-8gpu.yaml; NNODES=1 ;;
  multinode) cfg=infra/train/accelerate-multinode.yaml ;;
  cpu2) cfg=infra/train/accelerate-cpu-2proc.yaml; GPUS_PER_NODE=2; NNODES=1; export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;
  *) echo "unknown mode $mode (1gpu, 8gpu, multinode, cpu2)" >&2; exit 2 ;;
esac
if [ "${LAUNCHER:-accelerate}" = torchrun ]; then
  exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m trackgo_model.train "$@"
fi
exec "$PY" -m accelerate.commands.launch --config_file "$cfg" \
  --num_machines "$NNODES" --num_processes $((NNODES * GPUS_PER_NODE)) --machine_rank "$NODE_RANK" \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
  -m trackgo_model.train "$@"
