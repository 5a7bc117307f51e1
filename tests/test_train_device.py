"""The training loop's device rule on a CPU machine: tensors reach numpy through ``to_host``
(detached, copied), collectives run where the backend reduces (NCCL: the training device,
gloo: the CPU). The CUDA half runs on a GPU machine: ``scripts/gpu_check.sh``."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from rayorch.train.loops import epoch_sums, reduce_device, to_host, training_device


def test_to_host_detaches_and_copies_any_tensor():
    t = torch.tensor([1.0, 2.0], requires_grad=True) * 3  # .numpy() here raises
    with pytest.raises(RuntimeError):
        t.numpy()
    assert np.array_equal(to_host(t), np.array([3.0, 6.0], dtype=np.float32))


@pytest.mark.parametrize(
    "device", [torch.device("cpu"), torch.device("meta"), torch.device("cuda", 3)]
)
def test_without_a_process_group_sums_stay_on_the_cpu(device):
    assert reduce_device(device) == torch.device("cpu")
    assert epoch_sums([1.0, 2.0, 3.5, 4.0], device) == [1.0, 2.0, 3.5, 4.0]


def test_training_device_is_the_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: scripts/gpu_check.sh checks the GPU placement")
    assert training_device() == torch.device("cpu")


@pytest.fixture()
def gloo_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    yield
    torch.distributed.destroy_process_group()


def test_under_gloo_a_gpu_worker_reduces_on_the_cpu(gloo_group):
    """gloo reduces CPU tensors: the sums of a worker whose model is on a GPU go to the CPU
    for the all-reduce (under NCCL they would stay on the GPU)."""
    assert torch.distributed.get_backend() == "gloo"
    assert reduce_device(torch.device("cuda", 0)) == torch.device("cpu")
    assert epoch_sums([2.0, 4.0, 1.0, 2.0], torch.device("cpu")) == [2.0, 4.0, 1.0, 2.0]
