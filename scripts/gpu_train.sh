#!/usr/bin/env bash
# On the GPU machine: train the shipped 4D generator on the datasets scripts/gpu_collect.sh made.
# Stages are resumable (each run directory keeps step_<N>/ checkpoints and a `last` pointer), so
# the script can be called again in a later command of the same lease to continue.
#   usage: bash scripts/gpu_train.sh STAGE [SECONDS]
#     STAGE vae      image VAE, then pointmap VAE (initialised from it)
#     STAGE vae-from CKPT   take both VAEs from a generator checkpoint (e.g. the shipped one)
#     STAGE gen      generator (all tasks, task-conditioned), stops cleanly after SECONDS;
#                    GEN_INIT=CKPT starts its U-Net from a generator checkpoint
#     STAGE export   int8-stored checkpoint + eval on held-out views + latency -> $OUT
#   GEO4D_MODEL picks the model config (default small); GEN_RUN names the run directory (default
#   generator) and SHIP_NAME the exported checkpoint (default geo4d_small). The Dreamitate baseline:
#     GEO4D_MODEL=small_rgb GEN_RUN=dreamitate SHIP_NAME=dreamitate_small bash scripts/gpu_train.sh gen|export
set -uo pipefail
stage=$1; budget=${2:-480}
root=${GEO4D_WORK:-/tmp/geo4d}; runs=$root/runs; mkdir -p "$runs"
cfg=${GEO4D_MODEL:-small}
run=${GEN_RUN:-generator}; ship_name=${SHIP_NAME:-geo4d_small}
data=$(ls -d "$root"/data/*/ 2>/dev/null | sed 's:/$::' | tr '\n' ' ')
export OMP_WAIT_POLICY=PASSIVE
train() { python -m geo4d_policy.cli.train "$@" --config "$cfg" --data $data --workers "${GEN_WORKERS:-12}" --resume; }
case $stage in
  vae)
    train vae --modality rgb --out "$runs/image_vae" --steps "${VAE_STEPS:-1500}" --batch-size 8 --ckpt-every 500 --lr 3e-4
    train vae --modality pointmap --out "$runs/pointmap_vae" --init "$runs/image_vae" --steps "${VAE_STEPS:-1500}" \
      --batch-size 8 --ckpt-every 500 --lr 3e-4
    ;;
  vae-from)
    python - "$budget" "$runs" <<'PY'
import sys
from geo4d_policy.models.pipeline import Generator4D
g = Generator4D.from_pretrained(sys.argv[1])
g.image_vae.save_pretrained(f"{sys.argv[2]}/image_vae")
if g.pointmap_vae is not None:
    g.pointmap_vae.save_pretrained(f"{sys.argv[2]}/pointmap_vae")
print("VAEs of", sys.argv[1], "->", sys.argv[2])
PY
    ;;
  gen)
    # SIGINT after the time budget: the run keeps its last periodic checkpoint (every 250 steps).
    timeout --signal=INT "$budget" python -m geo4d_policy.cli.train generator --task all --config "$cfg" --data $data \
      --workers "${GEN_WORKERS:-12}" --resume --out "$runs/$run" --image-vae "$runs/image_vae" --pointmap-vae "$runs/pointmap_vae" \
      --steps "${GEN_STEPS:-20000}" --batch-size "${GEN_BATCH:-16}" --lr 2e-4 --ckpt-every 250 \
      ${GEN_INIT:+--init "$GEN_INIT"}
    tail -n 2 "$runs/$run/metrics.jsonl"
    ;;
  export)
    ship=$root/ship; rm -rf "${ship:?}/$ship_name"; mkdir -p "$ship"
    python - "$runs/$run" "$ship/$ship_name" <<'PY'
import sys, torch
from geo4d_policy.models.pipeline import Generator4D
g = Generator4D.from_pretrained(sys.argv[1])
g.save_pretrained(sys.argv[2], dtype=torch.int8)  # per-row int8 storage: half of fp16, same predictions to ~2 mm
print("exported", sys.argv[2], g.trained_tasks)
PY
    python -m geo4d_policy.cli.eval_video --checkpoint "$ship/$ship_name" --data $data --out "$root/eval_video_$ship_name" \
      --clips "${EVAL_CLIPS:-12}" --steps 25 --device "${EVAL_DEVICE:-cuda}"
    if [ -n "${OUT:-}" ]; then
      (cd "$ship/$ship_name" && split -b 15000000 -d model.safetensors "$OUT/$ship_name.model.safetensors.part" \
         && cp config.json "$OUT/$ship_name.config.json")
      (cd "$root" && tar czf "$OUT/train_results_$ship_name.tar.gz" "runs/$run/metrics.jsonl" "runs/$run/train_config.yaml" \
         "eval_video_$ship_name/metrics.json")
    fi
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
