#!/usr/bin/env bash
# The GPU half of the device rule (rayorch/train/loops.py), for a machine with CUDA GPUs.
# Not run in CI (no GPU there); run it by hand or through the device tool:
#   bash scripts/gpu_check.sh            # writes its evidence under ${OUT:-test-artifacts/gpu}
# 1. placement: Ray sees the GPUs, a Ray Train worker gets one, its model/batches/sums are on
#    cuda:N, NCCL all-reduces the epoch sums on the GPU, to_host() brings predictions back;
# 2. one real training unit: the fraud example, features + one training unit on device="auto",
#    with use_gpu, checked for a finished MLflow run with train/val metrics.
# Needs a CUDA build of torch (constraints.txt pins a CPU one): set TORCH_INDEX_URL to a CUDA
# wheel index, e.g. https://download.pytorch.org/whl/cu128, and the script installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-test-artifacts/gpu}"
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled
unset RAY_ADDRESS
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
if ! python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  : "${TORCH_INDEX_URL:?torch has no CUDA here: set TORCH_INDEX_URL to a CUDA wheel index}"
  pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
fi
pip install -q -e ".[train]" -c constraints.txt 2>/dev/null || pip install -q -e ".[train]"

echo "== 1. placement and NCCL on the training device"
python - <<'PY' | tee "$OUT/placement.json"
import json, ray, torch
import ray.train, ray.train.torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

n = min(torch.cuda.device_count(), 2)
assert n >= 1, "no CUDA device visible to torch"
ray.init(address="local", num_gpus=n, include_dashboard=False, log_to_driver=True)

def loop(_cfg):
    from rayorch.train.loops import epoch_sums, reduce_device, to_host, training_device
    dev = training_device()
    model = ray.train.torch.prepare_model(torch.nn.Linear(3, 1))
    x = torch.ones(4, 3, device=dev)
    out = model(x).squeeze(-1)
    sums = epoch_sums([1.0, 2.0], dev)  # NCCL: reduced on the GPU
    ray.train.report({
        "device": str(dev), "param_device": str(next(model.parameters()).device),
        "backend": torch.distributed.get_backend(), "reduce_device": str(reduce_device(dev)),
        "sums": sums, "host_preds": to_host(out).tolist(),
    })

res = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=n, use_gpu=True)).fit()
m = res.metrics
assert m["device"].startswith("cuda") and m["param_device"].startswith("cuda"), m
assert m["backend"] == "nccl" and m["reduce_device"].startswith("cuda"), m
assert m["sums"] == [1.0 * n, 2.0 * n], m
print(json.dumps({k: m[k] for k in ("device", "param_device", "backend", "reduce_device", "sums")}))
ray.shutdown()
PY

echo "== 2. one real training unit of the fraud example on the GPU"
export RAYORCH_HOME="$(mktemp -d)/home"
GPU_CONFIG=configs/fraud-gpu.local.yaml  # the fraud example with one GPU per training worker
trap 'rm -f "$GPU_CONFIG"' EXIT
sed 's/gpus_per_worker: 0/gpus_per_worker: 1/' configs/fraud.yaml > "$GPU_CONFIG"
grep -q 'gpus_per_worker: 1' "$GPU_CONFIG"
rayorch data generate -c "$GPU_CONFIG" --start 2026-10-01 --end 2026-10-02 --keys city=SF
rayorch backfill -c "$GPU_CONFIG" --start 2026-10-02 --end 2026-10-02 --keys city=SF --json \
  | tee "$OUT/backfill.json"
python - "$OUT/backfill.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["ok"] and s["exit_code"] == 0 and s["trained"], s
print("training unit finished on the GPU machine:", s["state"], s["trained"])
PY
echo "gpu_check: OK (evidence in $OUT)"
