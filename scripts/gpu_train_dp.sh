#!/usr/bin/env bash
# On the GPU machine: train the Diffusion Policy baseline on the datasets scripts/gpu_collect.sh made
# (/tmp/geo4d/data/<Task>) within a time budget, and export the fp16 checkpoint to ship.
#   usage: bash scripts/gpu_train_dp.sh SECONDS [TASK ...]      (default: every dataset there)
#     SECONDS        training time of this call (start-up and export add about a minute)
#     DP_MODE        multi (default): one task-conditioned model -> ship/diffusion_policy_small/
#                    per_task: one model per task, SECONDS shared -> ship/diffusion_policy_small/<Task>/
#     DP_CONFIG (small)  DP_STEPS (the recipe's)  DP_BATCH (64)  DP_WORKERS (12)  DP_CKPT_EVERY (500)
#     GEO4D_GPUS (1)     GPUs of one DDP run (scripts/gpu_launch.sh); DP_BATCH and DP_WORKERS are per GPU
# Resumable: each run directory keeps step_<N>/ checkpoints and a `last` pointer, so calling the
# script again in a later command of the same lease continues the same runs (one command may run
# 10 minutes: keep SECONDS <= ~500). The cosine LR schedule spans DP_STEPS: keep it fixed across
# calls, and size it from the s_per_step the first call logs (loading is the likely bottleneck:
# about 17 ms per sample per worker on a 2-core dev machine, HDF5 gzip decoding).
# Results go to $OUT: the shipped directory as one tar, and the runs' metrics and configs.
set -uo pipefail
budget=${1:-480}; shift || true
root=${GEO4D_WORK:-/tmp/geo4d}; runs=$root/runs; mkdir -p "$runs"
cfg=${DP_CONFIG:-small}; mode=${DP_MODE:-multi}
ship=$root/ship/diffusion_policy_$cfg
tasks=("$@")
if [ ${#tasks[@]} -eq 0 ]; then
  for d in "$root"/data/*/; do [ -f "$d/meta.json" ] && tasks+=("$(basename "$d")"); done
fi
[ ${#tasks[@]} -eq 0 ] && { echo "no datasets under $root/data (run scripts/gpu_collect.sh first)" >&2; exit 2; }
export OMP_WAIT_POLICY=PASSIVE
source "$(dirname "$0")/gpu_launch.sh"
train() {  # train OUT SECONDS EXPORT_DIR DATASET...
  local out=$1 secs=$2 export_dir=$3; shift 3
  # timeout is only a backstop: --max-time stops the run cleanly with a checkpoint.
  timeout --signal=INT $((secs + 600)) $(train_cmd "${GEO4D_GPUS:-1}" 29520) diffusion_policy --config "$cfg" \
    --data "$@" --out "$out" --resume --max-time "$secs" ${DP_STEPS:+--steps "$DP_STEPS"} \
    --batch-size "${DP_BATCH:-64}" --workers "${DP_WORKERS:-12}" --ckpt-every "${DP_CKPT_EVERY:-500}" \
    --export "$export_dir"
  tail -n 3 "$out/metrics.jsonl"
}
t0=$(date +%s)
case $mode in
  multi)
    rm -rf "$ship"/*/  # per-task exports of an earlier DP_MODE=per_task call
    data=(); for t in "${tasks[@]}"; do data+=("$root/data/$t"); done
    train "$runs/diffusion_policy_$cfg" "$budget" "$ship" "${data[@]}"
    ;;
  per_task)
    rm -f "$ship/config.json" "$ship/model.safetensors"  # a multi-task export would take precedence
    per=$(( budget / ${#tasks[@]} ))
    for t in "${tasks[@]}"; do train "$runs/diffusion_policy_${cfg}_$t" "$per" "$ship/$t" "$root/data/$t"; done
    ;;
  *) echo "unknown DP_MODE $mode (multi|per_task)" >&2; exit 2 ;;
esac
echo "diffusion_policy ($mode, ${tasks[*]}): $(( $(date +%s) - t0 )) s"
find "$ship" -name model.safetensors -exec du -b {} + | awk '{s += $1; print} END {printf "fp16 weights total: %.2f MB\n", s / 1e6}'
if [ -n "${OUT:-}" ]; then
  tar cf "$OUT/diffusion_policy_$cfg.tar" -C "$(dirname "$ship")" "$(basename "$ship")"
  (cd "$root" && tar czf "$OUT/dp_train_results.tar.gz" runs/diffusion_policy_*/metrics.jsonl \
     runs/diffusion_policy_*/train_config.yaml 2>/dev/null)
fi
