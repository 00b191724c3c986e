#!/usr/bin/env bash
# On a machine of several GPUs: how training scales, then the generator's and the Diffusion Policy's
# accumulated training on all of them (DDP through scripts/gpu_launch.sh). One stage per device call,
# or several in one call; data and runs live in $GEO4D_WORK (default /tmp/geo4d) while the machine
# stays warm (a bare machine re-collects: scripts/gpu_generator.sh collect).
#   usage: bash scripts/gpu_multigpu.sh STAGE [ARGS]
#     scale [COUNTS...]     generator training throughput on 1, 2 and all GPUs (default; or the process
#                           counts given): a fresh U-Net on the autoencoders, GEN_BATCH clips per GPU,
#                           SCALE_STEPS steps each; clips/s and per-GPU efficiency against one GPU ->
#                           $OUT/multigpu_scaling.json (SCALE_DP=1 adds the Diffusion Policy, samples/s)
#     ae SECONDS            the committed autoencoders continued, each on half of the GPUs, kept when
#                           better on validation data (gpu_generator.sh ae)
#     gen SECONDS           the generator on all GPUs (gpu_generator.sh gen; --resume continues it)
#     eval NAME [CKPT]      geo4d-eval-video of CKPT (default: the gen run) on the validation data
#                           -> $OUT/eval_NAME.json (run `eval before assets/checkpoints/geo4d_small` too)
#     dp [CALL_SECONDS]     the Diffusion Policy on all GPUs (gpu_dp.sh train: collects its DP_EPISODES
#                           per task, trains DP_CONFIG, exports int8 and probes it; resumes)
#     export NAME           the generator's bf16/int8 checkpoint -> $OUT (gpu_generator.sh export)
# Environment: GEO4D_GPUS (all visible), GEO4D_MODEL (small), GEN_BATCH (64 per GPU), GEN_LR (2e-4),
# IMG_AE / PM_AE (as in gpu_generator.sh gen), SCALE_STEPS (60), SCALE_EPISODES (8 per task),
# EVAL_CLIPS (30), DP_BATCH (64 per GPU). The learning rates are not scaled with the global batch.
set -uo pipefail
here=$(dirname "$0")
source "$here/gpu_launch.sh"
stage=$1; shift
root=${GEO4D_WORK:-/tmp/geo4d}; runs=$root/runs; mkdir -p "$runs"
cfg=${GEO4D_MODEL:-small}
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
n_gpus=$(gpu_count)
export GEO4D_GPUS=${GEO4D_GPUS:-$(( n_gpus > 0 ? n_gpus : 1 ))}
train_dirs() { for d in "$root"/data/*/; do [ -f "$d/meta.json" ] && echo -n "${d%/} "; done; }
val_dirs() { for d in "$root"/val/*/; do [ -f "$d/meta.json" ] && echo -n "${d%/} "; done; }
have_data() { [ -n "$(train_dirs)" ] || bash "$here/gpu_generator.sh" collect; }
cores=$(python -c 'import os; print(len(os.sched_getaffinity(0)))')

scale_run() {  # scale_run KIND N: one timed run; prints KIND:RUN_DIR
  local kind=$1 n=$2 out=$runs/scale_${1}_$2 workers=$(( cores / $2 > 8 ? 8 : cores / $2 ))
  rm -rf "$out"
  case $kind in
    generator)
      $(train_cmd "$n" $((29600 + n))) generator --task all --data $(train_dirs) --out "$out" --config "$cfg" \
        --init "${GEN_INIT:-assets/checkpoints/geo4d_small}" --gpu-data --max-episodes "${SCALE_EPISODES:-8}" \
        --batch-size "${GEN_BATCH:-64}" --steps "${SCALE_STEPS:-60}" --log-every "${SCALE_LOG:-10}" \
        --ckpt-every 1000000 --warmup-steps 10 --workers "$workers" > "$out.log" 2>&1 ;;
    diffusion_policy)
      $(train_cmd "$n" $((29700 + n))) diffusion_policy --config "${DP_CONFIG:-small}" --data $(train_dirs) \
        --out "$out" --batch-size "${DP_BATCH:-64}" --steps "${SCALE_STEPS:-60}" --workers "$workers" \
        --ckpt-every 1000000 > "$out.log" 2>&1 ;;
  esac || { echo "scale $kind x$n failed:" >&2; tail -n 30 "$out.log" >&2; return 1; }
  echo "$kind:$out"
}

case $stage in
  scale)
    have_data
    counts=("$@")
    [ ${#counts[@]} -eq 0 ] && mapfile -t counts < <(printf '%s\n' 1 2 "$GEO4D_GPUS" | awk -v n="$GEO4D_GPUS" '$1 <= n' | sort -nu)
    kinds=(generator); [ "${SCALE_DP:-0}" = 1 ] && kinds+=(diffusion_policy)
    runs_done=()
    for kind in "${kinds[@]}"; do
      for n in "${counts[@]}"; do r=$(scale_run "$kind" "$n") || exit 1; runs_done+=("$r"); done
    done
    python - "$root/multigpu_scaling.json" "${runs_done[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path
rows = []
for arg in sys.argv[2:]:
    kind, d = arg.split(":", 1)
    d = Path(d)
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"s_per_step"' in x]
    launch = json.loads((d / (d / "last").read_text().strip() / "config.json").read_text())["training"]["launch"]
    timed = recs[2:] or recs[-1:]  # the first log periods hold compilation, autotuning and allocation
    s = statistics.median(r["s_per_step"] for r in timed)
    rows.append({"kind": kind, "gpus": launch["num_processes"], "batch_per_gpu": launch["batch_size_per_process"],
                 "global_batch": launch["global_batch_size"], "lr": launch["lr"], "s_per_step": s,
                 "samples_per_s": launch["global_batch_size"] / s, "log_periods_timed": len(timed),
                 "last_loss": recs[-1]["loss"]})
for r in rows:
    one = [x for x in rows if x["kind"] == r["kind"] and x["gpus"] == 1]
    r["efficiency_per_gpu"] = r["samples_per_s"] / (r["gpus"] * one[0]["samples_per_s"]) if one else None
    eff = "-" if r["efficiency_per_gpu"] is None else f"{r['efficiency_per_gpu']:.2f}"
    print(f"{r['kind']:>16} x{r['gpus']}: global batch {r['global_batch']:4d}  {r['s_per_step']:.3f} s/step  "
          f"{r['samples_per_s']:8.1f} samples/s  efficiency per GPU {eff}")
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1) + "\n")
PY
    if [ -n "${OUT:-}" ]; then cp "$root/multigpu_scaling.json" "$OUT/"; fi
    ;;
  ae|gen|export) bash "$here/gpu_generator.sh" "$stage" "$@" ;;
  eval)
    name=$1; ckpt=${2:-$runs/${GEN_RUN:-generator}}
    python -m geo4d_policy.cli.eval_video --checkpoint "$ckpt" --data $(val_dirs) --out "$root/eval_$name" \
      --device "${EVAL_DEVICE:-cuda}" --clips "${EVAL_CLIPS:-30}" > "$root/eval_$name.log" 2>&1 || { tail -n 20 "$root/eval_$name.log"; exit 1; }
    tail -n 12 "$root/eval_$name.log"
    if [ -n "${OUT:-}" ]; then cp "$root/eval_$name/metrics.json" "$OUT/eval_$name.json"; fi
    ;;
  dp) bash "$here/gpu_dp.sh" train "$@" ;;
  *) echo "unknown stage $stage (scale|ae|gen|eval|dp|export)" >&2; exit 2 ;;
esac
