#!/usr/bin/env bash
# On the GPU machine (16 cores, EGL rendering): collect expert demonstrations for every task and
# benchmark the expert, all tasks in parallel. Datasets stay on the machine (/tmp/geo4d/data);
# small results (rollout records, dataset info) go to $OUT/collect_results.tar.gz.
#   usage: [COLLECT_SECONDS=S] bash scripts/gpu_collect.sh EPISODES_PER_TASK ROLLOUT_EPISODES [TASK ...]
set -uo pipefail
n=${1:-50}; m=${2:-30}; shift 2 || true
tasks=("$@"); [ ${#tasks[@]} -eq 0 ] && tasks=(PlaceAppleFromBowlIntoBin PutSpatulaOnTable StoreCerealBoxUnderShelf)
root=${GEO4D_WORK:-/tmp/geo4d}; mkdir -p "$root/data" "$root/rollouts"
# Cores before OMP_NUM_THREADS=1: GNU nproc reports OMP_NUM_THREADS when it is set, which made every
# task collect with one worker (serially) on the 16-core machine until 2026-11-23.
cores=${COLLECT_CORES:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
per=$(( cores / ${#tasks[@]} )); [ "$per" -lt 1 ] && per=1
t0=$(date +%s)
for t in "${tasks[@]}"; do
  # COLLECT_SECONDS: stop collecting (SIGINT: finished episodes are kept, the run resumes later).
  ${COLLECT_SECONDS:+timeout --signal=INT "$COLLECT_SECONDS"} python -m geo4d_policy.cli.collect --task "$t" \
    --episodes "$n" --out "$root/data/$t" --workers "$per" --resume > "$root/collect_$t.log" 2>&1 &
done
wait
t1=$(date +%s)
for t in "${tasks[@]}"; do
  [ "$m" -gt 0 ] && python -m geo4d_policy.cli.rollout --task "$t" --episodes "$m" --policy expert --workers "$per" \
    --out "$root/rollouts/$t/expert" --resume > "$root/rollout_$t.log" 2>&1 &
done
wait
t2=$(date +%s)
echo "collect ${n}/task: $((t1 - t0)) s; expert rollouts ${m}/task: $((t2 - t1)) s on $cores cores"
for t in "${tasks[@]}"; do
  tail -n 12 "$root/collect_$t.log"; python -m geo4d_policy.cli.dataset info "$root/data/$t" --json > "$root/data_info_$t.json" 2>&1
  tail -n 14 "$root/rollout_$t.log"
done
if [ -n "${OUT:-}" ]; then
  (cd "$root" && tar czf "$OUT/collect_results.tar.gz" rollouts/*/*/episodes.jsonl rollouts/*/*/summary.json \
     rollouts/*/*/config.yaml data_info_*.json collect_*.log rollout_*.log data/*/collect_log.jsonl data/*/meta.json 2>/dev/null)
fi
