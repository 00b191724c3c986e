# The CPU check of the fine pointmap path (2026-12-07), as run on the 2-core CPU. Variants, in the
# order run: B = the path with diffusers ResnetBlock2D (3x3) blocks, A = no path, C = pixel blocks with
# a depthwise 3x3, D = pixel blocks (1x1 only; the design kept). Each variant ran with the code of
# its time; the sigma profile of the shipped checkpoint is sigma_profile_shipped.json.
cd /work/main && source .venv/bin/activate && export PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE
D="/tmp/replan/data/PlaceAppleFromBowlIntoBin /tmp/replan/data/PutSpatulaOnTable /tmp/replan/data/StoreCerealBoxUnderShelf"  # data-stream seeds 0-1
V="/tmp/cpuval/PlaceAppleFromBowlIntoBin /tmp/cpuval/PutSpatulaOnTable /tmp/cpuval/StoreCerealBoxUnderShelf"  # seeds 700000-1, CPU-rendered
common="generator --task all --data $D --init assets/checkpoints/geo4d_small --steps 120 --warmup-steps 10 --lr 5e-4 --batch-size 2 --gpu-data --workers 1 --cache-pairs 2 --log-every 10 --override edm.p_mean=-2.3 --override edm.p_std=0.6"
for v in B A C D; do
  extra="--override unet.fine_pointmap_channels=32"; [ $v = A ] && extra=""
  python -m geo4d_policy.cli.train $common --out /tmp/fx/run$v $extra
  python scripts/generator_sigma_profile.py --checkpoint /tmp/fx/run$v --data $V --clips 3 --sigmas 0.03 0.1 0.3 --out /tmp/fx/profile$v.json
done
python scripts/generator_sigma_profile.py --checkpoint assets/checkpoints/geo4d_small --data $V --clips 3 --sigmas 0.03 0.1 0.3 --out /tmp/fx/profile0.json
