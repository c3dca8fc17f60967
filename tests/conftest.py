"""Shared fixtures: tiny specs that make every code path run in milliseconds."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
import yaml

from netadapt.cost import count_macs, count_params
from netadapt.spec import NetworkSpec, spec_from_dict

if TYPE_CHECKING:
    from netadapt.config import SearchConfig

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


def write_idx(directory: Path, n_train: int = 240, n_test: int = 80, seed: int = 0) -> Path:
    """A learnable 3-class IDX dataset: each class is a bright bar in another place."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 3, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 4 + 8 * label: 10 + 8 * label, 4:24] = 250
        header = np.array([0x803, n, 28, 28], dtype=">i4").tobytes()
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([0x801, n], dtype=">i4").tobytes() + labels.tobytes())
    return directory


def same_weights(a: Path, b: Path) -> bool:
    """Whether two saved state dicts hold the same tensors, bit for bit."""
    x, y = torch.load(a), torch.load(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def journal(run: Path) -> list[dict]:
    """A run's journal records (none before it exists; a torn last line left out)."""
    path = run / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def tiny_search(folder: Path, budget_fraction: float = 0.75, **changes: Any) -> SearchConfig:
    """The config of the tests' tiny search: the TINY spec and a generated IDX dataset
    written into ``folder``, a latency budget of ``budget_fraction`` of the seed's
    (fake_ms), a few steps per phase; ``changes`` override any field."""
    from netadapt.config import SearchConfig
    from netadapt.spec import load_spec

    spec_path = folder / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY))
    data = write_idx(folder / "data")
    budget = fake_ms(load_spec(spec_path)) * budget_fraction
    settings = dict(spec=str(spec_path), data=str(data), device="fake", step=0.1,
                    short_term_steps=3, long_term_steps=4, seed_steps=6, deploy_steps=3,
                    resolution=16, batch_size=16, holdout=40, torch_device="cpu")
    return SearchConfig(budgets=(f"{budget:.4f}ms",), **{**settings, **changes})
