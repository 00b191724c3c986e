cd /work/main && source .venv/bin/activate && export PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE
D="/tmp/replan/data/PlaceAppleFromBowlIntoBin /tmp/replan/data/PutSpatulaOnTable /tmp/replan/data/StoreCerealBoxUnderShelf"
V="/tmp/cpuval/PlaceAppleFromBowlIntoBin /tmp/cpuval/PutSpatulaOnTable /tmp/cpuval/StoreCerealBoxUnderShelf"
common="generator --task all --data $D --init assets/checkpoints/geo4d_small --steps ${STEPS:-120} --warmup-steps 10 --lr 5e-4 --batch-size 2 --gpu-data --workers 1 --cache-pairs 2 --log-every 10 --override edm.p_mean=-2.3 --override edm.p_std=0.6"
for v in B A; do
  extra=""; [ $v = B ] && extra="--override unet.fine_pointmap_channels=32"
  t0=$(date +%s); python -m geo4d_policy.cli.train $common --out /tmp/fx/run$v $extra > /tmp/fx/train$v.log 2>&1; echo "train $v $(( $(date +%s)-t0 )) s rc $?"
  python scripts/generator_sigma_profile.py --checkpoint /tmp/fx/run$v --data $V --clips 3 --sigmas 0.03 0.1 0.3 --out /tmp/fx/profile$v.json > /tmp/fx/profile$v.log 2>&1
done
python scripts/generator_sigma_profile.py --checkpoint assets/checkpoints/geo4d_small --data $V --clips 3 --sigmas 0.03 0.1 0.3 --out /tmp/fx/profile0.json > /tmp/fx/profile0.log 2>&1
echo all done
