#!/usr/bin/env bash
# The strong Diffusion Policy on the GPU machine (16 cores), one command per device call; call it
# again in the next call while the machine is warm (its /tmp survives), every stage resumes.
#
#   usage: bash scripts/gpu_dp.sh train [CALL_SECONDS]     (collect -> train -> export -> probe)
#   (DP_TASKS: the tasks, default all three; DP_COLLECT_WORKERS: collection workers per task, in order)
#          bash scripts/gpu_dp.sh rollouts [CALL_SECONDS]  (Table-2 cells + sanity controls)
# Several GPUs: GEO4D_GPUS=N trains on N of them (DDP through scripts/gpu_launch.sh; DP_BATCH, the
# batch per GPU, default the recipe's; a step trains on N x DP_BATCH samples drawn as one process of
# that batch would draw them, geo4d_policy/train/distributed.py; the learning rate is the recipe's).
# A run resumes on any number of GPUs that keeps its global batch. scripts/gpu_multigpu.sh dp uses all.
#
# train: 1. collect DP_EPISODES (200) expert demonstrations per task (data seeds from DP_DATA_SEED,
#           0) into $GEO4D_WORK/data, the three tasks at once with DP_COLLECT_WORKERS ("8 3 5":
#           apple, spatula, cereal; measured 34-43 / 13-16 / 19-23 s per episode per core there, so
#           the full 3 x 200 takes about 1000 s: two calls), time-boxed to what the call leaves;
#        2. once every task has its episodes: train DP_CONFIG (medium) until CALL_SECONDS - 75 s (decoding
#           every training frame into GPU memory first, DP_WORKERS reader processes per GPU: about a
#           minute for 600 episodes),
#           continuing this machine's run, or starting from DP_INIT (default: the committed
#           assets/checkpoints/diffusion_policy_<config>, if any; DP_INIT=none: from scratch);
#        3. export int8 to $GEO4D_WORK/ship/diffusion_policy_<config>, probe it on the held-out
#           episodes, and put in $OUT: diffusion_policy_<config>.tar (the checkpoint to commit:
#           tar xf it in assets/checkpoints/) and dp_results.tar.gz (metrics.jsonl with the probes
#           logged during training, train_config.yaml, probe_int8.json, collection logs).
# rollouts: DP_ROLLOUT_EPISODES (30) episodes per task of the exported (else committed) checkpoint,
#        as three cells each: eval seeds on novel views (the Table-2 cell), eval seeds with the
#        fixed training-distribution pair (--views fixed-train), and data seeds on the episode's own
#        training views (--data-seeds --views train); time-boxed, resumable; summaries to
#        $OUT/dp_rollouts.tar.gz.
set -uo pipefail
stage=${1:-train}; call=${2:-570}
t0=$(date +%s)
left() { echo $(( call - ($(date +%s) - t0) )); }
root=${GEO4D_WORK:-/tmp/geo4d}; mkdir -p "$root/data" "$root/runs" "$root/ship" "$root/logs"
cfg=${DP_CONFIG:-medium}; episodes=${DP_EPISODES:-200}
ship=$root/ship/diffusion_policy_$cfg; run=$root/runs/diffusion_policy_$cfg
read -r -a tasks <<< "${DP_TASKS:-PlaceAppleFromBowlIntoBin PutSpatulaOnTable StoreCerealBoxUnderShelf}"
export OMP_WAIT_POLICY=PASSIVE
source "$(dirname "$0")/gpu_launch.sh"
gpus=${GEO4D_GPUS:-1}
cores=$(python -c 'import os; print(len(os.sched_getaffinity(0)))')
have() { python - "$1" <<'PY' 2>/dev/null || echo 0
import json, sys
print(len(json.load(open(sys.argv[1] + "/meta.json"))["episodes"]))
PY
}

collect() {  # collect SECONDS: every task towards DP_EPISODES, in parallel, time-boxed
  local secs=$1 w i=0 pids=()
  read -r -a w <<< "${DP_COLLECT_WORKERS:-8 3 5}"
  for t in "${tasks[@]}"; do
    if [ "$(have "$root/data/$t")" -lt "$episodes" ]; then
      OMP_NUM_THREADS=1 timeout --signal=INT "$secs" python -m geo4d_policy.cli.collect --task "$t" \
        --episodes "$episodes" --out "$root/data/$t" --workers "${w[$i]}" --seed "${DP_DATA_SEED:-0}" \
        --resume >> "$root/logs/collect_$t.log" 2>&1 &
      pids+=($!)
    fi
    i=$((i + 1))
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for t in "${tasks[@]}"; do echo "$t: $(have "$root/data/$t") / $episodes episodes"; done
}

results() {  # small results to $OUT
  [ -n "${OUT:-}" ] || return 0
  (cd "$root" && tar czf "$OUT/dp_results.tar.gz" --ignore-failed-read logs \
     "runs/diffusion_policy_$cfg/metrics.jsonl" "runs/diffusion_policy_$cfg/train_config.yaml" \
     "ship/probe_int8_$cfg.json" data/*/collect_log.jsonl data/*/meta.json 2>/dev/null)
  [ -f "$ship/config.json" ] && tar cf "$OUT/diffusion_policy_$cfg.tar" -C "$root/ship" "diffusion_policy_$cfg"
  ls -l "$OUT"
}

case $stage in
  train)
    missing=0
    for t in "${tasks[@]}"; do [ "$(have "$root/data/$t")" -lt "$episodes" ] && missing=1; done
    if [ "$missing" = 1 ]; then
      [ "$(left)" -gt 90 ] && collect $(( $(left) - 30 ))
      echo "collection: $(( $(date +%s) - t0 )) s"
      for t in "${tasks[@]}"; do [ "$(have "$root/data/$t")" -lt "$episodes" ] && { results; exit 0; }; done
    fi
    secs=$(( $(left) - 75 ))  # the export, the probe and the archives take under a minute
    if [ "$secs" -lt 60 ]; then echo "only $secs s left for training: call again"; results; exit 0; fi
    init=${DP_INIT:-assets/checkpoints/diffusion_policy_$cfg}
    init_args=(); [ "$init" != none ] && [ -f "$init/config.json" ] && init_args=(--init "$init")
    data=(); for t in "${tasks[@]}"; do data+=("$root/data/$t"); done
    workers=${DP_WORKERS:-$(( cores / gpus > 14 ? 14 : (cores / gpus < 1 ? 1 : cores / gpus) ))}
    # --max-time stops cleanly with a checkpoint (all processes together); timeout is only a backstop.
    timeout --signal=INT $(( secs + 120 )) $(train_cmd "$gpus" 29520) diffusion_policy --config "$cfg" \
      --data "${data[@]}" --out "$run" --resume --max-time "$secs" "${init_args[@]}" --workers "$workers" \
      ${DP_BATCH:+--batch-size "$DP_BATCH"} ${DP_LR:+--lr "$DP_LR"} --export "$ship" --export-dtype int8 \
      > "$root/logs/train_$cfg.log" 2>&1 || { tail -n 30 "$root/logs/train_$cfg.log"; results; exit 1; }
    tail -n 5 "$root/logs/train_$cfg.log"
    grep '"loss"' "$run/metrics.jsonl" | tail -n 2
    python scripts/dp_probe.py --checkpoint "$ship" --data "${data[@]}" --out "$root/ship/probe_int8_$cfg.json" \
      --device "$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
    du -b "$ship/model.safetensors"
    results
    ;;
  rollouts)
    ckpt=$ship; [ -f "$ckpt/config.json" ] || ckpt=assets/checkpoints/diffusion_policy_$cfg
    n=${DP_ROLLOUT_EPISODES:-30}; out=$root/rollouts; pids=()
    for t in "${tasks[@]}"; do
      for cell in table2 fixed_train_views data_seeds_train_views; do
        case $cell in
          table2) control="" ;;
          fixed_train_views) control="--views fixed-train" ;;
          data_seeds_train_views) control="--data-seeds --views train" ;;
        esac
        name=$cell
        OMP_NUM_THREADS=1 timeout --signal=INT $(( $(left) - 60 )) python -m geo4d_policy.cli.rollout --task "$t" \
          --policy diffusion_policy --episodes "$n" --workers "${DP_ROLLOUT_WORKERS:-2}" --device "${DP_DEVICE:-cuda}" --resume \
          --policy-option checkpoint="$ckpt" $control --out "$out/$t/$name" > "$root/logs/rollout_${t}_$name.log" 2>&1 &
        pids+=($!)
      done
    done
    for p in "${pids[@]}"; do wait "$p"; done
    python - "$out" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/*/summary.json")):
    s = json.loads(p.read_text())
    print(f"{p.parent.parent.name:28s} {p.parent.name:22s} {s['successes']}/{s['finished']} "
          f"({s['success_rate']:.2f}, 95% [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]) {s['failure_reasons']}")
PY
    [ -n "${OUT:-}" ] && (cd "$root" && tar czf "$OUT/dp_rollouts.tar.gz" --exclude='*.mp4' rollouts logs)
    ;;
  *) echo "unknown stage $stage (train|rollouts)" >&2; exit 2 ;;
esac
echo "gpu_dp.sh $stage: $(( $(date +%s) - t0 )) s"
