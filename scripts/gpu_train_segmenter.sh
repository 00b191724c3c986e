#!/usr/bin/env bash
# On the GPU machine: train the gripper part segmenter on the datasets scripts/gpu_collect.sh made
# (/tmp/geo4d/data/<Task>) within a time budget, export it (fp16) and compare it with the shipped
# one on the same held-out frames. Resumable: calling it again continues the run.
#   usage: bash scripts/gpu_train_segmenter.sh SECONDS
#     SEG_CONFIG (medium)  SEG_STEPS (the recipe's)  SEG_WORKERS (10)  SEG_EVAL_FRAMES (2000)  SEG_DEVICE (cuda)
# Results go to $OUT: the exported checkpoint as one tar, the run's metrics/config and both evaluations.
set -uo pipefail
budget=${1:-420}
root=${GEO4D_WORK:-/tmp/geo4d}; runs=$root/runs; mkdir -p "$runs"
cfg=${SEG_CONFIG:-medium}; run=$runs/segmenter_$cfg; ship=$root/ship/segmenter_$cfg
data=(); for d in "$root"/data/*/; do [ -f "$d/meta.json" ] && data+=("${d%/}"); done
[ ${#data[@]} -eq 0 ] && { echo "no datasets under $root/data (run scripts/gpu_collect.sh first)" >&2; exit 2; }
export OMP_WAIT_POLICY=PASSIVE
t0=$(date +%s)
# timeout is only a backstop: --max-time stops the run cleanly (checkpoint + final evaluation).
timeout --signal=INT $((budget + 300)) python -m geo4d_policy.cli.train segmenter --config "$cfg" --data "${data[@]}" \
  --out "$run" --resume --device "${SEG_DEVICE:-cuda}" --max-time "$budget" --workers "${SEG_WORKERS:-10}" \
  ${SEG_STEPS:+--steps "$SEG_STEPS"} --export "$ship"
tail -n 2 "$run/metrics.jsonl"
echo "segmenter ($cfg): $(( $(date +%s) - t0 )) s"
n=${SEG_EVAL_FRAMES:-2000}
for ckpt in "$ship" assets/checkpoints/segmenter_medium; do
  python -m geo4d_policy.cli.train segmenter --data "${data[@]}" --evaluate "$ckpt" --frames "$n" --device "${SEG_DEVICE:-cuda}" \
    --out "$root/seg_eval_$(basename "$ckpt").json"
done
if [ -n "${OUT:-}" ]; then
  tar cf "$OUT/segmenter_$cfg.tar" -C "$(dirname "$ship")" "$(basename "$ship")"
  (cd "$root" && tar czf "$OUT/segmenter_train_results.tar.gz" "runs/segmenter_$cfg/metrics.jsonl" \
     "runs/segmenter_$cfg/train_config.yaml" "runs/segmenter_$cfg/eval_heldout.json" seg_eval_*.json 2>/dev/null)
fi
