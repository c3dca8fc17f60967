"""Shared fixtures: tiny specs that make every code path run in milliseconds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from netadapt.cost import count_macs, count_params
from netadapt.spec import NetworkSpec, spec_from_dict

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
TORCHVISION_KEYS = Path(__file__).resolve().parent / "data" / "torchvision_state_dicts.json"

TINY = {
    "name": "tiny",
    "input_size": [32, 32],
    "in_channels": 3,
    "num_classes": 10,
    "stem": {"out": 16, "kernel": 3, "stride": 2, "act": "hswish"},
    "blocks": [
        {"kernel": 3, "exp": 16, "out": 16, "stride": 1, "se": False, "act": "relu"},
        {"kernel": 3, "exp": 48, "out": 24, "stride": 2, "se": True, "act": "hswish"},
        {"kernel": 5, "exp": 72, "out": 24, "stride": 1, "se": True, "act": "hswish"},
    ],
    "last_conv": {"out": 64, "act": "hswish"},
    "head": {"type": "classifier", "width": 128, "act": "hswish", "dropout": 0.2},
}


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine
    OpenMP threads waiting for each other made tests 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def private_user_dirs(tmp_path_factory):
    """Seeds trained by the tests go to a cache of their own, and the user's own device
    profiles and tables (netadapt/resources.py) are an empty folder: tests see only the
    shipped files, and never write where the user keeps theirs."""
    import os

    names = ("NETADAPT_CACHE", "NETADAPT_HOME", "NETADAPT_ROOT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["NETADAPT_CACHE"] = str(tmp_path_factory.mktemp("seed-cache"))
    os.environ["NETADAPT_HOME"] = str(tmp_path_factory.mktemp("netadapt-home"))
    os.environ.pop("NETADAPT_ROOT", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def tiny_dict() -> dict:
    """A fresh, mutable copy of the tiny spec's data."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_spec() -> NetworkSpec:
    return spec_from_dict(copy.deepcopy(TINY))


def randomize_(model: torch.nn.Module, input_size: tuple[int, int] = (32, 32),
               seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BN statistic non-trivial values, as training would, so
    that outputs are O(1) and a wrong computation shows (fresh init gives ~0 logits).

    BN running statistics are then measured on random input of ``input_size``, as
    training leaves them, which keeps activations bounded through 15 residual blocks.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or "running" in name:
                continue
            if name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
            elif tensor.dim() == 1:  # BN gamma
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.5)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        shape = (4, first_conv.in_channels, *input_size)
        for _ in range(2):
            model(torch.randn(shape, generator=g))
        for bn in bns:
            bn.momentum = 0.01
    return model.eval()


# ------------------------------------------------------------ fakes shared by test modules


def fake_ms(spec) -> float:
    """Latency that grows with MACs, plus a per-block overhead: monotone enough."""
    return count_macs(spec) / 1e5 + 0.05 * len(spec.blocks)


def fake_accuracy(spec) -> float:
    """More parameters, more accuracy; deterministic."""
    return 1.0 - 1.0 / (1.0 + count_params(spec) / 1e4)


def evaluate(iteration, spec, group) -> float:
    return fake_accuracy(spec)
