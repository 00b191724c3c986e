#!/usr/bin/env bash
# On the GPU machine: the figures of "precision from video to placement" (issue 21), in two
# self-contained calls (each starts from a bare machine and ends by archiving to $OUT):
#   eval: expert and oracle, EPISODES per task on the evaluation seeds (success, placement error);
#   dev:  oracle, EPISODES per task on the development seeds (the same figures, not tuned to the
#         evaluation stream) and scripts/gripper_decisions.py on its records (the heuristics'
#         evidence), then dev-seed demonstrations of all three tasks and geo4d-eval-tracking on
#         them in the policy's setting (segmenter on every frame) and with first-frame labels only
#         (how often a frame > 3 cm off is still trusted).
# Every cell is a resumable geo4d-rollout run (scripts/table2.py --parallel, time-boxed): run the
# same call again while the machine is warm to finish cells cut by the time box; the tables count
# finished episodes.
#   device run, carry [".device"]:
#     source .device/setup.sh && bash scripts/gpu_precision.sh eval 540
#     source .device/setup.sh && bash scripts/gpu_precision.sh dev 540
# Cost (estimates, not measured on the GPU machine with this code: oracle ~40 / 90 / 150-250 s
# per spatula / apple / cereal episode and process in GPU-machine records of 2026-12-04; expert
# ~28 / 56 / 25 s on the CPU): one part is ~10000 core-seconds of oracle episodes (eval adds
# ~3500 of expert ones), and its longest cell is 30 serial cereal oracle episodes split over the
# cell's workers. On the 16-core machine a part takes three or four calls (each resumes while the
# machine is warm); on nvidia-h100-x4 (64 cores) about one.
#   env: P_EPISODES (30), P_WORKERS (parallel episodes per cell; default from the core count:
#        eval "expert=max(1,cores/16) oracle=(cores-3*expert)/3", dev "oracle=cores/3"),
#        P_TRACK_EPISODES (3 dev-seed demonstrations per task for geo4d-eval-tracking),
#        P_TRACK_SECONDS (200 of the dev call's budget for them), P_DEVICE (cuda; cpu for a dry run,
#        or beside GPU training on the same machine: every cuda episode process holds 3-9 GB of GPU
#        memory, and nine of them beside the generator's training ran the H100 out of memory; before
#        a5d0ecf the tracker stayed on CUDA even with cpu, and twelve such processes did it again),
#        P_POLICIES (the eval part's policies, "expert oracle"; "oracle" once the expert's cells are
#        recorded, as results/precision/expert_eval_seeds_2026-12-07/ is).
set -uo pipefail
part=${1:?usage: gpu_precision.sh eval|dev SECONDS}; budget=${2:-540}
t0=$(date +%s)
root=${GEO4D_WORK:-/tmp/geo4d}; mkdir -p "$root"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
episodes=${P_EPISODES:-30}
# Cores before OMP_NUM_THREADS=1 counts (GNU nproc reports OMP_NUM_THREADS when it is set).
cores=$(python -c 'import os; print(len(os.sched_getaffinity(0)))')
case "$part" in
  eval) read -r -a policies <<< "${P_POLICIES:-expert oracle}"; stream=eval; track_s=0
        e=$(( cores / 16 > 1 ? cores / 16 : 1 ))
        default_workers="expert=$e oracle=$(( (cores - 3 * e) / 3 > 1 ? (cores - 3 * e) / 3 : 1 ))"
        [[ " ${policies[*]} " == *" expert "* ]] || default_workers="oracle=$(( cores / 3 > 1 ? cores / 3 : 1 ))" ;;
  dev) policies=(oracle); stream=dev; track_s=${P_TRACK_SECONDS:-200}
       default_workers="oracle=$(( cores / 3 > 1 ? cores / 3 : 1 ))" ;;
  *) echo "gpu_precision.sh: unknown part '$part'; valid parts: eval, dev" >&2; exit 2 ;;
esac
pw=(); for item in ${P_WORKERS:-$default_workers}; do pw+=(--policy-workers "$item"); done
cells=$root/precision_$part
python scripts/table2.py --out "$cells" --parallel --device "${P_DEVICE:-cuda}" --episodes "$episodes" --workers 1 "${pw[@]}" \
  --policies "${policies[@]}" --seed-stream "$stream" --max-seconds $(( budget - track_s - 30 ))
python - "$cells" <<'PY'
import json, sys
from pathlib import Path
for s in sorted(Path(sys.argv[1]).glob("*/*/summary.json")):
    d = json.loads(s.read_text())
    med, p90 = d.get("placement_error_median_m"), d.get("placement_error_p90_m")
    fmt = lambda v: "-" if v is None else f"{1e3 * v:.1f} mm"
    print(f"{d['task']:28s} {d['policy']:8s} {d['seed_stream']:4s} {d['successes']}/{d['finished']} "
          f"CI95 [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}]  placement median {fmt(med)} p90 {fmt(p90)}")
PY
if [ "$part" = dev ]; then
  runs=(); for d in "$cells"/*/oracle; do [ -s "$d/episodes.jsonl" ] && runs+=("$d"); done
  [ ${#runs[@]} -gt 0 ] && python scripts/gripper_decisions.py "${runs[@]}" --json "$cells/gripper_decisions.json" \
    | tee "$cells/gripper_decisions.md"
  left=$(( budget - ($(date +%s) - t0) - 20 ))
  n=${P_TRACK_EPISODES:-3}
  for t in PlaceAppleFromBowlIntoBin PutSpatulaOnTable StoreCerealBoxUnderShelf; do
    timeout --signal=INT $(( left * 2 / 3 )) python -m geo4d_policy.cli.collect --task "$t" --episodes "$n" \
      --seed-stream dev --out "$root/dev_data/$t" --workers "$n" --resume > "$root/collect_dev_$t.log" 2>&1 &
  done
  wait
  data=(); for d in "$root"/dev_data/*/; do ls "$d"episodes/*.h5 > /dev/null 2>&1 && data+=("$d"); done
  if [ ${#data[@]} -eq 0 ]; then
    echo "gpu_precision.sh: no dev-seed demonstration finished in time; call again to resume" >&2
  else
    left=$(( budget - ($(date +%s) - t0) - 15 ))
    timeout --signal=INT $left python -m geo4d_policy.cli.eval_tracking --data "${data[@]}" --out "$root/track_dev" \
      --clips 10 --labels segmenter_all,masks_all > "$root/track_dev.log" 2>&1 &
    timeout --signal=INT $left python -m geo4d_policy.cli.eval_tracking --data "${data[@]}" \
      --out "$root/track_dev_first_frame" --clips 10 --labels masks,segmenter > "$root/track_dev_first_frame.log" 2>&1 &
    wait
    tail -n 14 "$root/track_dev.log" "$root/track_dev_first_frame.log"
  fi
fi
echo "gpu_precision.sh $part: $(( $(date +%s) - t0 )) s"
if [ -n "${OUT:-}" ]; then
  (cd "$root" && tar czf "$OUT/precision_${part}_results.tar.gz" --exclude='*.mp4' --exclude='*.html' \
     "precision_$part" $( [ "$part" = dev ] && echo track_dev track_dev_first_frame track_dev.log \
     track_dev_first_frame.log collect_dev_*.log dev_data/*/meta.json dev_data/*/collect_log.jsonl ) 2>/dev/null)
fi
