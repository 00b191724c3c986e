#!/usr/bin/env bash
# On the GPU machine, in ONE device call (a machine's /tmp is lost when it goes idle for 30 s
# between calls): collect demonstrations for a time box, train the Diffusion Policy for the rest
# of the call, export it to $OUT (diffusion_policy_small.tar) with the training metrics.
#   usage: [COLLECT_SECONDS=170] [CALL_SECONDS=570] [DP_STEPS=7800] bash scripts/gpu_dp_oneshot.sh
#     DP_STEPS: the cosine schedule's length; size it from the step time (0.033-0.042 s on an H200
#     with 12 loader workers, 2026-12-04) times the training seconds this leaves.
set -uo pipefail
t0=$(date +%s)
export GEO4D_WORK=${GEO4D_WORK:-/tmp/geo4d} OMP_WAIT_POLICY=PASSIVE
mkdir -p "$GEO4D_WORK/data"
COLLECT_SECONDS=${COLLECT_SECONDS:-170} bash scripts/gpu_collect.sh 400 0 > "$GEO4D_WORK/collect.out" 2>&1
for t in "$GEO4D_WORK"/data/*/; do echo "$(basename "$t"): $(ls "$t/episodes" | wc -l) episodes"; done
# Leave ~45 s for the trainer's start-up, the export and the archives.
left=$(( ${CALL_SECONDS:-570} - ($(date +%s) - t0) - 45 ))
echo "collected in $(( $(date +%s) - t0 )) s; training for $left s"
OMP_NUM_THREADS=1 DP_STEPS=${DP_STEPS:-7800} DP_WORKERS=${DP_WORKERS:-12} DP_CKPT_EVERY=${DP_CKPT_EVERY:-2000} \
  bash scripts/gpu_train_dp.sh "$left"
echo "gpu_dp_oneshot: $(( $(date +%s) - t0 )) s"
