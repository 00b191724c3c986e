#!/usr/bin/env bash
# On the GPU machine: the generator's accumulated training, one stage per device call (or several
# stages in one call). Data lives in $GEO4D_WORK (default /tmp/geo4d), which survives only while
# the machine stays warm: every stage re-collects what is missing, so a bare machine works too.
#   usage: bash scripts/gpu_generator.sh STAGE [ARGS]
#     collect [TRAIN_EPS] [VAL_EPS]   expert demonstrations of the three tasks: training data from
#                                     the data stream's base 0, validation data from base 7
#                                     (seeds 700000+i, never trained on); defaults 24 / 6 per task
#     ae SECONDS                      continue the committed image autoencoder (the one inside
#                                     assets/checkpoints/geo4d_small), measure its round trip on the
#                                     validation data, name the better one in $GEO4D_WORK/ae.env
#                                     (IMG_AE=...: give it to `gen` with PM_AE; exported to $OUT
#                                     when it is the new one)
#     ae-sweep SECONDS                train the autoencoder candidates of $AE_CANDIDATES in parallel
#     ae-select SECONDS               measure every candidate's round trip on the validation data,
#                                     pick the best image and pointmap autoencoders, train those on
#                                     for SECONDS; writes $GEO4D_WORK/chosen.env
#     patch-codec                     the pointmap patch codec ($GEO4D_WORK/runs/pm_patch: no network,
#                                     its latent normalisation measured on the training data)
#     gen SECONDS                     the stage ends within SECONDS (loading, cache, training, the last
#                                     checkpoint: training gets SECONDS - GEN_STARTUP_S, default 45);
#                                     it trains the generator on a latent cache: continuing GEN_INIT (a
#                                     generator checkpoint, its own autoencoders), else a new U-Net on
#                                     IMG_AE/PM_AE when given (PM_AE=$GEO4D_WORK/runs/pm_patch with
#                                     GEN_OVERRIDES="pointmap_vae.codec=patch pointmap_vae.latent_channels=192"),
#                                     else continuing the shipped assets/checkpoints/geo4d_small (a
#                                     checkpoint without the config's fine pointmap path grows it)
#     export NAME                     bf16/int8 checkpoint of the last generator -> $OUT (shards)
#     eval [CLIPS] [STEPS ...]        geo4d-eval-video of the run's last checkpoint (GEN_EVAL_CHECKPOINT:
#                                     another one, e.g. the shipped assets/checkpoints/geo4d_small) on the
#                                     validation data (CLIPS per task, default 5; each STEPS count,
#                                     default 25) and its sigma profile -> $OUT (eval_RUN_STEPS.json,
#                                     sigma_profile_RUN.json)
# Environment: GEO4D_MODEL (default small), COLLECT_VAL_WORKERS (parallel validation episodes per task, 1), GEN_EVAL_DEVICE (cuda; cpu for a dry run), GEN_BATCH (64), GEN_LR (2e-4), AE_BATCH (64), GEN_RUN (run
# directory name, default generator), GEN_COMPILE (non-empty: geo4d-train generator --compile). The Dreamitate baseline's RGB-only generator continues the same way:
#   GEO4D_MODEL=small_rgb GEN_RUN=dreamitate GEN_INIT=assets/checkpoints/dreamitate_small \
#     bash scripts/gpu_generator.sh gen 300 && GEN_RUN=dreamitate bash scripts/gpu_generator.sh export dreamitate_small
set -uo pipefail
# GEO4D_GPUS=N (default 1): the `ae` and `gen` stages train on N GPUs (DDP, scripts/gpu_launch.sh;
# batch sizes are per GPU); `ae` gives each of the two autoencoders half of them.
source "$(dirname "$0")/gpu_launch.sh"
gpus=${GEO4D_GPUS:-1}
stage=$1; shift
root=${GEO4D_WORK:-/tmp/geo4d}; runs=$root/runs; mkdir -p "$runs" "$root/data" "$root/val"
cfg=${GEO4D_MODEL:-small}
tasks=(PlaceAppleFromBowlIntoBin PutSpatulaOnTable StoreCerealBoxUnderShelf)
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
train_dirs() { for t in "${tasks[@]}"; do echo -n "$root/data/$t "; done; }
val_dirs() { for t in "${tasks[@]}"; do echo -n "$root/val/$t "; done; }
cores=$(python -c 'import os; print(len(os.sched_getaffinity(0)))')

collect() {
  local n=${1:-24} v=${2:-6} t0; t0=$(date +%s)
  for t in "${tasks[@]}"; do
    OMP_NUM_THREADS=1 ${COLLECT_SECONDS:+timeout --signal=INT "$COLLECT_SECONDS"} \
      python -m geo4d_policy.cli.collect --task "$t" --episodes "$n" --out "$root/data/$t" \
      --workers $(( (cores - 3) / 3 )) --seed 0 --resume > "$root/collect_$t.log" 2>&1 &
    OMP_NUM_THREADS=1 ${COLLECT_SECONDS:+timeout --signal=INT "$COLLECT_SECONDS"} \
      python -m geo4d_policy.cli.collect --task "$t" --episodes "$v" --out "$root/val/$t" \
      --workers "${COLLECT_VAL_WORKERS:-1}" --seed 7 --resume > "$root/collect_val_$t.log" 2>&1 &
  done
  wait
  echo "collect: $n train + $v val episodes per task in $(( $(date +%s) - t0 )) s on $cores cores"
  for t in "${tasks[@]}"; do tail -n 2 "$root/collect_$t.log"; tail -n 1 "$root/collect_val_$t.log"; done
}

# name | modality | overrides (space-separated KEY=VALUE)
AE_CANDIDATES=${AE_CANDIDATES:-"img8|rgb|image_vae.block_out_channels=[32,64,64,64] image_vae.norm_num_groups=32 image_vae.latent_channels=8 image_vae.gripper_loss_weight=5
img16|rgb|image_vae.block_out_channels=[32,64,64,64] image_vae.norm_num_groups=32 image_vae.latent_channels=16 image_vae.gripper_loss_weight=5
pm8|pointmap|pointmap_vae.block_out_channels=[32,64,64,64] pointmap_vae.norm_num_groups=32 pointmap_vae.latent_channels=8 pointmap_vae.gripper_loss_weight=10 pointmap_vae.edge_loss_weight=4
pm16|pointmap|pointmap_vae.block_out_channels=[32,64,64,64] pointmap_vae.norm_num_groups=32 pointmap_vae.latent_channels=16 pointmap_vae.gripper_loss_weight=10 pointmap_vae.edge_loss_weight=4"}

ae_train() {  # name modality seconds overrides...
  local name=$1 mod=$2 secs=$3; shift 3
  local ov=(); for o in "$@"; do ov+=(--override "$o"); done
  python -m geo4d_policy.cli.train vae --modality "$mod" --data $(train_dirs) --out "$runs/ae_$name" --config "$cfg" \
    "${ov[@]}" --steps 200000 --batch-size "${AE_BATCH:-64}" --lr "${AE_LR:-4e-4}" --ckpt-every 2000 --gpu-data \
    --workers 4 --warmup-steps 200 --ema-decay 0.995 --max-time "$secs" --resume > "$root/ae_$name.log" 2>&1
  echo "ae $name: $(tail -n 1 "$runs/ae_$name/metrics.jsonl")"
}

# The committed image autoencoder is the shipped generator's own (no second copy is kept in the
# repository); stages that need it as a VAE checkpoint write it out once per machine.
committed=$root/committed_ae
committed_image() {
  [ -f "$committed/image/config.json" ] || python -c "import sys, torch
from geo4d_policy.models.pipeline import Generator4D
Generator4D.from_pretrained(sys.argv[1]).image_vae.save_pretrained(sys.argv[2], dtype=torch.float16)" \
    assets/checkpoints/geo4d_small "$committed/image"
}

case $stage in
  collect) collect "$@" ;;
  ae)
    # The image autoencoder, continued from the committed one (the shipped pointmap "autoencoder"
    # is the patch codec: nothing to train); its round trip measured before and after, the better
    # one named in $GEO4D_WORK/ae.env and exported to $OUT when it is the new one.
    [ -d "$root/data/${tasks[0]}" ] || collect
    committed_image
    $(train_cmd "$gpus" 29501) vae --modality rgb --data $(train_dirs) --out "$runs/ae_image" --config "$cfg" \
      --init "$committed/image" --steps 1000000 --batch-size "${AE_BATCH:-64}" --lr "${AE_LR:-4e-4}" --ckpt-every 2000 \
      --gpu-data --workers 4 --warmup-steps 200 --ema-decay 0.995 --max-time "$1" --resume > "$root/ae_image.log" 2>&1
    python scripts/eval_autoencoders.py --data $(val_dirs) --out "$root/ae_eval.json" --frames-per-episode 40 \
      --candidate committed "$committed/image" - --candidate trained "$runs/ae_image" -
    python - "$root/ae_eval.json" "$root/ae.env" "$committed" "$runs" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def pooled(name):
    return sum(t["candidates"][name]["mean"]["psnr"] for t in r["tasks"].values()) / len(r["tasks"])
img = "trained" if pooled("trained") > pooled("committed") else "committed"
path = {"committed": sys.argv[3] + "/image", "trained": sys.argv[4] + "/ae_image"}[img]
open(sys.argv[2], "w").write(f"IMG_AE={path}\n")
print("kept: image", img)
PY
    # shellcheck disable=SC1091
    source "$root/ae.env"
    if [ -n "${OUT:-}" ] && [ "$IMG_AE" != "$committed/image" ]; then
      python -c "import sys, torch; from geo4d_policy.models.vae import VAE
v = VAE.from_pretrained(sys.argv[1]); v.save_pretrained(sys.argv[2], dtype=torch.float16)" "$IMG_AE" "$root/ship_ae/image"
      tar cf "$OUT/autoencoders_small.tar" -C "$root/ship_ae" . && cp "$root/ae_eval.json" "$OUT/"
    fi
    ;;
  ae-sweep)
    [ -d "$root/data/${tasks[0]}" ] || collect
    while IFS='|' read -r name mod ov; do
      [ -n "$name" ] && { read -ra o <<< "$ov"; ae_train "$name" "$mod" "$1" "${o[@]}" & }
    done <<< "$AE_CANDIDATES"
    wait
    ;;
  ae-select)
    cands=(); gens=()
    while IFS='|' read -r name mod ov; do
      [ -n "$name" ] || continue
      if [ "$mod" = rgb ]; then cands+=(--candidate "$name" "$runs/ae_$name" -); else cands+=(--candidate "$name" - "$runs/ae_$name"); fi
    done <<< "$AE_CANDIDATES"
    [ -n "${OLD_GENERATOR:-}" ] && gens=(--generator shipped "$OLD_GENERATOR")
    python scripts/eval_autoencoders.py --data $(val_dirs) --out "$root/ae_eval_sweep.json" "${cands[@]}" "${gens[@]}" \
      --frames-per-episode 40
    python - "$root/ae_eval_sweep.json" "$root/chosen.env" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def pooled(name, key):
    vals = [t["candidates"][name]["mean"].get(key) for t in r["tasks"].values()]
    return sum(vals) / len(vals) if all(v is not None for v in vals) else None
names = list(next(iter(r["tasks"].values()))["candidates"])
img = [n for n in names if pooled(n, "psnr") is not None and n != "shipped"]
pm = [n for n in names if pooled(n, "gripper_px_mm_median") is not None and n != "shipped"]
# Image: highest PSNR; pointmap: lowest gripper-pixel error (the tracker's input).
best_img = max(img, key=lambda n: pooled(n, "psnr"))
best_pm = min(pm, key=lambda n: pooled(n, "gripper_px_mm_median"))
open(sys.argv[2], "w").write(f"IMG={best_img}\nPM={best_pm}\n")
print("chosen:", best_img, best_pm)
PY
    # shellcheck disable=SC1091
    source "$root/chosen.env"
    if [ "${1:-0}" -gt 0 ]; then
      while IFS='|' read -r name mod ov; do
        { [ "$name" = "$IMG" ] || [ "$name" = "$PM" ]; } && { read -ra o <<< "$ov"; ae_train "$name" "$mod" "$1" "${o[@]}" & }
      done <<< "$AE_CANDIDATES"
      wait
      python scripts/eval_autoencoders.py --data $(val_dirs) --out "$root/ae_eval_chosen.json" \
        --candidate chosen "$runs/ae_$IMG" "$runs/ae_$PM" --frames-per-episode 40
    fi
    ;;
  gen)
    # --max-time counts training alone; the data load, the cache and the last save come on top.
    secs=$(( $1 - ${GEN_STARTUP_S:-45} )); [ "$secs" -gt 0 ] || { echo "gen: $1 s leaves no time to train" >&2; exit 2; }
    [ -d "$root/data/${tasks[0]}" ] || collect
    ov=(); for o in ${GEN_OVERRIDES:-}; do ov+=(--override "$o"); done
    if [ -n "${GEN_INIT:-}" ]; then src=(--init "$GEN_INIT")
    elif [ -f "$root/chosen.env" ]; then
      # shellcheck disable=SC1091
      source "$root/chosen.env"; src=(--image-vae "$runs/ae_$IMG" --pointmap-vae "$runs/ae_$PM")
      # The generator's autoencoder fields are the chosen sweep candidates'.
      while IFS='|' read -r name mod o2; do
        { [ "$name" = "$IMG" ] || [ "$name" = "$PM" ]; } && for o in $o2; do ov+=(--override "$o"); done
      done <<< "$AE_CANDIDATES"
    elif [ -n "${PM_AE:-}" ]; then
      [ -n "${IMG_AE:-}" ] || committed_image
      src=(--image-vae "${IMG_AE:-$committed/image}" --pointmap-vae "$PM_AE")
    else
      # Training accumulates: continue the shipped generator (its own autoencoders).
      src=(--init assets/checkpoints/geo4d_small)
    fi
    $(train_cmd "$gpus" 29510) generator --task all --data $(train_dirs) --out "$runs/${GEN_RUN:-generator}" \
      --config "$cfg" "${ov[@]}" "${src[@]}" --steps 1000000 --batch-size "${GEN_BATCH:-64}" --lr "${GEN_LR:-2e-4}" \
      --ckpt-every 500 --warmup-steps "${GEN_WARMUP:-200}" --ema-decay "${GEN_EMA:-0.995}" --gpu-data --workers 8 ${GEN_COMPILE:+--compile} \
      --max-time "$secs" --resume > "$root/gen_${GEN_RUN:-generator}.log" 2>&1
    tail -n 3 "$root/gen_${GEN_RUN:-generator}.log"; tail -n 2 "$runs/${GEN_RUN:-generator}/metrics.jsonl"
    ;;
  patch-codec)
    # The pointmap patch codec (no network, exact): only its latent normalisation is measured.
    [ -d "$root/data/${tasks[0]}" ] || collect
    python -m geo4d_policy.cli.train vae --modality pointmap --data $(train_dirs) --out "$runs/pm_patch" \
      --config "$cfg" --override pointmap_vae.codec=patch --override pointmap_vae.latent_channels=192 \
      --batch-size 64 --gpu-data --workers 4 --resume > "$root/pm_patch.log" 2>&1; tail -n 1 "$root/pm_patch.log"
    ;;
  export)
    name=$1; ship=$root/ship/$name; rm -rf "$ship"
    python - "$runs/${GEN_RUN:-generator}" "$ship" <<'PY'
import sys, torch
from geo4d_policy.models.pipeline import Generator4D
g = Generator4D.from_pretrained(sys.argv[1])
g.save_pretrained(sys.argv[2], dtype=torch.int8)
print("exported", sys.argv[2], g.trained_tasks)
PY
    if [ -n "${OUT:-}" ]; then
      (cd "$ship" && split -b 15000000 -d model.safetensors "$OUT/$name.model.safetensors.part" && cp config.json "$OUT/$name.config.json")
    fi
    ;;
  eval)
    # geo4d-eval-video of the last checkpoint of the run on the validation data (never trained on),
    # generator and floor rows, once per sampler-step count, with the sigma profile beside it; the
    # metrics (moving_arm_* included) go to $OUT as eval_<run>_<steps>.json.
    clips=${1:-5}; shift || true
    run=${GEN_RUN:-generator}; ck=${GEN_EVAL_CHECKPOINT:-$runs/$run}
    python scripts/generator_sigma_profile.py --checkpoint "$ck" --data $(val_dirs) --clips 3 --sigmas 0.03 0.1 0.3 \
      --out "$root/sigma_profile_$run.json" > "$root/sigma_$run.log" 2>&1 &
    for steps in "${@:-25}"; do
      python -m geo4d_policy.cli.eval_video --checkpoint "$ck" --data $(val_dirs) --out "$root/eval_${run}_$steps" \
        --clips "$clips" --steps "$steps" --rows generator repeat_current --device "${GEN_EVAL_DEVICE:-cuda}" \
        --workers $(( cores > 2 ? cores - 2 : 1 )) 2>&1 | tail -n 16
      [ -n "${OUT:-}" ] && cp "$root/eval_${run}_$steps/metrics.json" "$OUT/eval_${run}_$steps.json"
    done
    wait; tail -n 12 "$root/sigma_$run.log"; [ -n "${OUT:-}" ] && cp "$root/sigma_profile_$run.json" "$OUT/"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
