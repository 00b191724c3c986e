# Sourced by the scripts/gpu_*.sh training stages: how geo4d-train starts on one or several GPUs.
#   train_cmd N [PORT]   the command prefix running geo4d_policy.cli.train in N processes:
#     N = 1             python -m geo4d_policy.cli.train
#     N > 1, CUDA       accelerate launch --multi_gpu --num_processes N (DDP, one process per GPU of
#                       CUDA_VISIBLE_DEVICES, rendezvous on PORT: give parallel launches their own)
#     N > 1, no CUDA    torchrun --standalone (gloo processes on the CPU: the scripts' CPU tests)
#   gpu_count            visible CUDA devices (0 without CUDA)
# --batch-size is per process: a step trains on N x batch-size samples, the same ones (and the same
# noise) one process of that batch would (geo4d_policy/train/distributed.py); the learning rate is
# the recipe's whatever N. Each checkpoint's config.json states both under training.launch.
gpu_count() { python -c 'import torch; print(torch.cuda.device_count())'; }
train_cmd() {
  local n=${1:-1} port=${2:-29500}
  if [ "$n" -le 1 ]; then
    echo "python -m geo4d_policy.cli.train"
  elif [ "$(gpu_count)" -gt 0 ]; then
    echo "python -m accelerate.commands.launch --multi_gpu --num_machines 1 --num_processes $n" \
         "--main_process_port $port --dynamo_backend no -m geo4d_policy.cli.train"
  else
    echo "python -m torch.distributed.run --standalone --nproc_per_node $n -m geo4d_policy.cli.train"
  fi
}
