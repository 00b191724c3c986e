#!/usr/bin/env bash
# On the GPU machine (16 cores, one H100): the fast-replan figures (issue 24), each phase
# time-boxed and resumable. One 10-minute call will not hold them all: repeat the same command
# right away (the machine keeps /tmp only while warm) and each call skips what is done and
# continues the rest (bench cells, eval-tracking tasks, the rollout passes where they stopped):
#   1. datasets for geo4d-eval-tracking (geo4d-collect, ET_EPISODES=2 per task), in the background;
#   2. scripts/bench_replan.py: seconds per replan, geo4d and oracle, old and new paths, 1 and 8
#      concurrent episodes (BENCH_CONCURRENCY) on the GPU, BENCH_REPLANS timed replans per stream;
#   3. the geo4d pass, 3 tasks x EPISODES (30) episodes (scripts/table2.py: compiled U-Net on the
#      shared server, 5 decoded frames, tracking on the GPU by default), time-boxed to GEO4D_SECONDS;
#   4. geo4d-eval-tracking on the three tasks (ET_CLIPS clips each) through the numpy (CPU) and the
#      torch (GPU) tracking paths, and their medians compared (agreement: 0.5 mm and 0.5 deg);
#   5. the oracle pass, 3 tasks x EPISODES, with the time left.
# Seeds: bench and eval-tracking datasets on the data stream, the passes on evaluation seeds
# (Table-2 cells). Results go to $OUT/replan_results.tar.gz (bench json with its raw times and
# provenance, eval-tracking metrics and comparison, rollout records and summaries with their
# wall_s, logs, phase timeline).
# REPLAN_PHASES (default "bench geo4d eval_tracking oracle") runs only the phases named; a phase
# finished by an earlier call leaves $res/<phase>.done and is skipped.
# Run with carry [".device"] (bash ../shared/device/prepare.sh here first):
#   usage: source .device/setup.sh && [CALL_SECONDS=570] [BENCH_REPLANS=3] [GEO4D_SECONDS=150] [EPISODES=30] \
#          bash scripts/gpu_replan.sh
# CPU dry run of every command at a tiny scale (a typo must not cost a GPU call), here:
#   REPLAN_DEVICE=cpu REPLAN_TASKS=PutSpatulaOnTable BENCH_REPLANS=1 EPISODES=1 ET_EPISODES=1 ET_CLIPS=1 \
#   CALL_SECONDS=900 GEO4D_SECONDS=60 GEO4D_WORK=/tmp/replan_dry PATH=.venv/bin:$PATH PYTHONPATH=$PWD \
#   bash scripts/gpu_replan.sh     (about 8.5 minutes on the 2-core machine)
set -uo pipefail
t0=$(date +%s)
call=${CALL_SECONDS:-570}
device=${REPLAN_DEVICE:-cuda}
read -r -a tasks <<< "${REPLAN_TASKS:-PlaceAppleFromBowlIntoBin PutSpatulaOnTable StoreCerealBoxUnderShelf}"
root=${GEO4D_WORK:-/tmp/geo4d}; res=$root/replan; mkdir -p "$res" "$root/et_data"
export OMP_WAIT_POLICY=PASSIVE
phases=" ${REPLAN_PHASES:-bench geo4d eval_tracking oracle} "
want() { [[ "$phases" == *" $1 "* ]] && [ ! -f "$res/$1.done" ]; }  # asked for, and not done yet
left() { echo $(( call - ($(date +%s) - t0) )); }
mark() { echo "$(date +%s) $(( $(date +%s) - t0 )) s: $*" | tee -a "$res/timeline.txt"; }
archive() {
  [ -n "${OUT:-}" ] && (cd "$root" && tar czf "$OUT/replan_results.tar.gz" --exclude='*.mp4' --exclude='*.html' \
    --exclude='*.h5' --exclude='episodes/*' replan table2_geo4d table2_oracle et_data/*/meta.json 2>/dev/null)
}
# Whether a table2.py pass finished every episode of every cell (its table2.json).
pass_done() {
  python - "$1/table2.json" "${EPISODES:-30}" <<'EOF'
import json, sys
try:
    cells = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    raise SystemExit(1)
raise SystemExit(0 if cells and all(c.get("finished") == int(sys.argv[2]) for c in cells) else 1)
EOF
}
mark "start on $device ($(python -c 'import torch; print("torch", torch.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'))"

# 1. Eval-tracking datasets, one core per task in the background.
collect_pids=()
want eval_tracking && for t in "${tasks[@]}"; do
  OMP_NUM_THREADS=1 python -m geo4d_policy.cli.collect --task "$t" --episodes "${ET_EPISODES:-2}" \
    --out "$root/et_data/$t" --workers 1 --resume > "$res/collect_$t.log" 2>&1 &
  collect_pids+=($!)
done

# 2. Seconds per replan (cells already measured by an earlier call are kept).
if want bench; then
  mark "bench_replan"
  read -r -a conc <<< "${BENCH_CONCURRENCY:-1 8}"
  timeout --signal=INT --kill-after=60 $(( $(left) > 360 ? $(left) - 300 : 60 )) python scripts/bench_replan.py --devices "$device" \
    --concurrency "${conc[@]}" --replans "${BENCH_REPLANS:-3}" --tasks "${tasks[@]}" \
    --json "$res/bench_replan.json" --resume 2>&1 | tee -a "$res/bench_replan.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] && touch "$res/bench.done"
  archive
fi

# 3. The geo4d pass (GEO4D_WORKERS=5 episodes per task at once: 15 processes and the server on 16 cores).
# Its server compiles the U-Net (about a minute) before --max-seconds starts counting, and the cells
# get a minute's grace to save: 230 s of the call are kept for that and what follows.
if want geo4d && [ "$(left)" -gt 260 ]; then
  mark "geo4d pass"
  python scripts/table2.py --out "$root/table2_geo4d" --parallel --device "$device" --episodes "${EPISODES:-30}" \
    --tasks "${tasks[@]}" --policies geo4d --policy-workers "geo4d=${GEO4D_WORKERS:-5}" \
    --policy-option geo4d.compile_unet=true --policy-option geo4d.decode_frames=5 \
    --max-seconds "$(( ${GEO4D_SECONDS:-150} < $(left) - 230 ? ${GEO4D_SECONDS:-150} : $(left) - 230 ))" \
    > "$res/table2_geo4d.log" 2>&1
  tail -n 8 "$res/table2_geo4d.log"
  pass_done "$root/table2_geo4d" && touch "$res/geo4d.done"
  archive
fi

# 4. Tracking accuracy, numpy vs torch, once the datasets are there (a task already measured is kept).
if want eval_tracking && [ "$(left)" -gt 150 ]; then
  mark "waiting for the eval-tracking datasets"
  for pid in "${collect_pids[@]}"; do wait "$pid" || echo "collect $pid failed: see $res/collect_*.log"; done
  mark "geo4d-eval-tracking numpy and torch"
  budget=$(( $(left) - 90 ))
  for engine in numpy torch; do
    for t in "${tasks[@]}"; do
      [ -f "$res/eval_tracking/$engine/$t/metrics.json" ] && continue
      OMP_NUM_THREADS=2 timeout --signal=INT --kill-after=30 "$budget" python -m geo4d_policy.cli.eval_tracking \
        --data "$root/et_data/$t" --out "$res/eval_tracking/$engine/$t" --clips "${ET_CLIPS:-10}" \
        --labels masks_all,segmenter_all --segmenter assets/checkpoints/segmenter_medium \
        --tracker-engine "$engine" > "$res/eval_tracking_${engine}_$t.log" 2>&1 &
    done
  done
  wait
  python - "$res/eval_tracking" "${tasks[@]}" > "$res/eval_tracking_compare.txt" <<'EOF' && touch "$res/eval_tracking.done"
import json, sys
from pathlib import Path
root, tasks = Path(sys.argv[1]), sys.argv[2:]
missing = [f"{e}/{t}" for e in ("numpy", "torch") for t in tasks if not (root / e / t / "metrics.json").is_file()]
if missing:
    print(f"not measured yet: {', '.join(missing)} (the next call continues)")
    raise SystemExit(1)
worst, rows = [0.0, 0.0], []
for t in tasks:
    a = json.loads((root / "numpy" / t / "metrics.json").read_text())["tasks"]
    b = json.loads((root / "torch" / t / "metrics.json").read_text())["tasks"]
    for task, by_src in a.items():
        for src, by_deg in by_src.items():
            for deg, r in by_deg.items():
                x, y = r["all"], b[task][src][deg]["all"]
                dt = abs(x["trans_mm_median"] - y["trans_mm_median"]); dr = abs(x["rot_deg_median"] - y["rot_deg_median"])
                worst = [max(worst[0], dt), max(worst[1], dr)]
                rows.append(f"{task} {src} {deg}: trans median {x['trans_mm_median']:.3f} / {y['trans_mm_median']:.3f} mm, "
                            f"rot median {x['rot_deg_median']:.3f} / {y['rot_deg_median']:.3f} deg, open/close "
                            f"{x['open_close_accuracy']:.3f} / {y['open_close_accuracy']:.3f}, ms/frame "
                            f"{x['ms_per_frame']:.0f} / {y['ms_per_frame']:.0f}  (numpy / torch)")
print("\n".join(rows))
print(f"largest median differences: {worst[0]:.3f} mm, {worst[1]:.3f} deg -> "
      f"{'AGREE' if worst[0] <= 0.5 and worst[1] <= 0.5 else 'DISAGREE'} (limits 0.5 mm, 0.5 deg)")
EOF
  cat "$res/eval_tracking_compare.txt"
  archive
fi

# 5. The oracle pass with what is left (a later call continues it).
if want oracle && [ "$(left)" -gt 90 ]; then
  mark "oracle pass"
  python scripts/table2.py --out "$root/table2_oracle" --parallel --device "$device" --episodes "${EPISODES:-30}" \
    --tasks "${tasks[@]}" --policies oracle --policy-workers "oracle=${ORACLE_WORKERS:-5}" \
    --max-seconds "$(( $(left) - 75 ))" > "$res/table2_oracle.log" 2>&1
  tail -n 8 "$res/table2_oracle.log"
  pass_done "$root/table2_oracle" && touch "$res/oracle.done"
fi
todo=(); for d in $phases; do want "$d" && todo+=("$d"); done
mark "done with this call; ${#todo[@]} phase(s) left: ${todo[*]:-none}"
archive
