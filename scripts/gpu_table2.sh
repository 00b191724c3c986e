#!/usr/bin/env bash
# On the GPU machine: the Table-2 pass (scripts/table2.py --parallel) time-boxed to SECONDS, then
# its small results (records, summaries, logs, table2.md/json) to $OUT/table2_results.tar.gz.
# Call it again within the same lease to resume every cell where it stopped.
#   usage: [T2_POLICIES="oracle geo4d diffusion_policy"] [T2_WORKERS="oracle=4 geo4d=2"] \
#          bash scripts/gpu_table2.sh SECONDS [EPISODES]
set -uo pipefail
budget=${1:-540}; episodes=${2:-30}
root=${GEO4D_WORK:-/tmp/geo4d}; out_dir=$root/table2; mkdir -p "$out_dir"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
pw=(); for item in ${T2_WORKERS:-oracle=4 geo4d=2 diffusion_policy=1}; do pw+=(--policy-workers "$item"); done
python scripts/table2.py --out "$out_dir" --parallel --device cuda --episodes "$episodes" --workers 1 "${pw[@]}" \
  --policies ${T2_POLICIES:-oracle geo4d diffusion_policy} --max-seconds "$budget"
if [ -n "${OUT:-}" ]; then
  (cd "$root" && tar czf "$OUT/table2_results.tar.gz" --exclude='*.mp4' --exclude='*.html' table2)
fi
