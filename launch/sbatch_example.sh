#!/bin/bash
# Plain sbatch (no submitit): one `torchrun` per node via `srun`, torchrun starts one process per GPU.
#
#   sbatch launch/sbatch_example.sh --config configs/market1501.yaml --set data.root=/data/Market-1501-v15.09.15
#
# Arguments go to `python -m cacl_dist.train` (TORCHRUN="python -m torch.distributed.run" if torchrun is not on PATH). Edit the #SBATCH lines for your cluster (or override
# them on the sbatch command line, e.g. `sbatch --nodes=4 --partition=gpu ...`). Submit from the
# repository root: the job runs there and relative paths (configs/, runs/) resolve against it.
# Before the time limit SLURM signals this script (B:USR1, 180 s ahead); it requeues the job, SLURM
# sends SIGTERM to the training processes, they write a checkpoint at their next step and the
# requeued job resumes from it. Writing a checkpoint must fit in the cluster's KillWait (see
# `scontrol show config | grep KillWait`) and in torchrun's --shutdown-timeout (30 s by default);
# `checkpoint.every_steps` bounds the loss otherwise. torchrun itself exits with status 1 after a
# signal even when training stopped cleanly: the run folder's status.txt says how training ended.
# `--fresh` among the arguments starts over only in the job's first start: a requeued job has
# SLURM_RESTART_COUNT > 0, and cacl_dist.train then resumes instead of starting over again.
#
#SBATCH --job-name=cacl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -uo pipefail

# processes per node: the GPUs SLURM gave this node, or NPROC_PER_NODE (e.g. CPU-only clusters)
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$NPROC_PER_NODE} / NPROC_PER_NODE ))}
[ "$OMP_NUM_THREADS" -ge 1 ] || export OMP_NUM_THREADS=1
MAX_REQUEUES=${MAX_REQUEUES:-10}

requeue_before_time_limit() {
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_REQUEUES" ]; then
        echo "$(date +%T) time limit near; requeued $MAX_REQUEUES times already, not again: submit again to resume"
        return
    fi
    echo "$(date +%T) time limit near: requeueing job $SLURM_JOB_ID; training checkpoints on the SIGTERM that follows"
    scontrol requeue "$SLURM_JOB_ID"
}
trap requeue_before_time_limit USR1

echo "$(date +%T) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_JOB_NUM_NODES nodes x" \
     "$NPROC_PER_NODE processes, rendezvous $MASTER_ADDR:$MASTER_PORT"
srun --kill-on-bad-exit=1 ${TORCHRUN:-torchrun} \
    --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node="$NPROC_PER_NODE" \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
    -m cacl_dist.train "$@" &
TRAINING=$!
# `wait` returns early when the USR1 trap runs; keep waiting until training has ended
while kill -0 "$TRAINING" 2>/dev/null; do
    wait "$TRAINING"
    STATUS=$?
done
echo "$(date +%T) torchrun exited with status ${STATUS:-0} (after a signal always 1; the run folder's" \
     "status.txt says whether training checkpointed and stopped: submit again to resume)"
exit "${STATUS:-0}"
