"""Training: fine-tunes learn, are deterministic per seed and resumable to the bit, keep
BatchNorm statistics fresh, and evaluation counts what it says."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from netadapt.checkpoint import Checkpoint
from netadapt.data import Data, Split
from netadapt.errors import TrainError
from netadapt.model import build_model
from netadapt.train import (
    _fast_layout,
    evaluate,
    finetune,
    lr_at,
    recalibrate_bn,
    train_seed,
)

from .conftest import randomize_

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)




def easy_split(name: str, n: int, seed: int, size: int = 16) -> Split:
    """Three classes told apart by brightness, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = labels.view(-1, 1, 1, 1) * 100.0 + 20 + torch.rand(n, 1, size, size, generator=g) * 30
    return Split(name, images.to(torch.uint8), labels, 3, MEAN, STD)


@pytest.fixture(scope="module")
def data() -> Data:
    return Data(easy_split("train", 96, 0), easy_split("holdout", 30, 1),
                easy_split("test", 30, 2), ("dark", "mid", "bright"))


@pytest.fixture
def spec(tiny_spec):
    return dataclasses.replace(tiny_spec, num_classes=3)


def tune(model: nn.Module, data: Data, steps: int = 6, **kw) -> nn.Module:
    kw = {"lr": 0.05, "batch_size": 16, "seed": 0, **kw}
    return finetune(model, data, steps, **kw)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seed_training_learns_an_easy_task(spec, data):
    model = train_seed(spec, data, 40, lr=0.1, batch_size=16, seed=0)
    assert not model.training
    assert evaluate(model, data.holdout) >= 0.9  # chance is 1/3


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_equal_seeds_give_identical_weights_and_other_seeds_do_not(spec, data, optimizer):
    lr = 0.05 if optimizer == "sgd" else 1e-3
    runs = [tune(randomize_(build_model(spec)), data, seed=s, optimizer=optimizer, lr=lr)
            for s in (0, 0, 1)]
    assert states_equal(runs[0], runs[1])
    assert not states_equal(runs[0], runs[2])


def test_resumed_finetune_ends_with_the_uninterrupted_weights(spec, data, tmp_path):
    straight = tune(randomize_(build_model(spec)), data, steps=8)

    def stop_after_five(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt  # a kill after the checkpoint of step 5 was written

    checkpoint = Checkpoint(tmp_path / "phase.pt", every_s=0)
    with pytest.raises(KeyboardInterrupt):
        tune(randomize_(build_model(spec)), data, steps=8, checkpoint=checkpoint,
             progress=stop_after_five)
    assert torch.load(tmp_path / "phase.pt")["step"] == 5
    # a fresh process: a new untrained model, only the file on disk
    steps_run: list[int] = []
    resumed = tune(build_model(spec), data, steps=8, progress=lambda s, _: steps_run.append(s),
                   checkpoint=Checkpoint(tmp_path / "phase.pt", every_s=3600))
    assert steps_run == [6, 7, 8]
    assert states_equal(straight, resumed)
    assert torch.load(tmp_path / "phase.pt")["step"] == 8  # the caller removes it


def test_a_checkpoint_of_other_settings_is_not_resumed(spec, data, tmp_path):
    checkpoint = Checkpoint(tmp_path / "phase.pt", every_s=0)
    tune(randomize_(build_model(spec)), data, steps=4, checkpoint=checkpoint)
    steps_run: list[int] = []
    tune(randomize_(build_model(spec)), data, steps=4, lr=0.5, checkpoint=checkpoint,
         progress=lambda s, _: steps_run.append(s))
    assert steps_run == [1, 2, 3, 4]


def test_finetune_leaves_the_global_rng_untouched(spec, data):
    model = randomize_(build_model(spec))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tune(model, data, steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_finetune_uses_the_given_bn_momentum_and_restores_the_models_own(spec, data):
    def mean_shift(momentum: float) -> float:
        model = randomize_(build_model(spec))
        before = model.features[0][1].running_mean.clone()
        tune(model, data, steps=1, bn_momentum=momentum)
        assert model.features[0][1].momentum == 0.01  # torchvision's, restored
        return float((model.features[0][1].running_mean - before).abs().mean())

    assert mean_shift(0.5) > 20 * mean_shift(0.01)


def test_recalibration_replaces_stale_statistics_with_the_datas(spec, data):
    model = randomize_(build_model(spec))
    bn = model.features[0][1]
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(1e4)
    recalibrate_bn(model, data, batches=6, batch_size=16)
    with torch.no_grad():
        conv_out = model.features[0][0](data.train.batch(torch.arange(len(data.train)))[0])
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)),
                               atol=0.05, rtol=0.05)
    assert bn.momentum == 0.01 and not model.training


class Constant(nn.Module):
    """Always predicts ``label`` (as classification or per-pixel logits)."""

    def __init__(self, label: int, pixels: bool = False) -> None:
        super().__init__()
        self.label, self.pixels = label, pixels
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3, *(x.shape[2:] if self.pixels else ()))
        logits[:, self.label] = 1.0
        return logits


def test_evaluate_is_top1_accuracy_and_restores_the_mode(data):
    model = Constant(label=1).train()
    assert evaluate(model, data.test, batch_size=7) == pytest.approx(10 / 30)
    assert model.training


def test_evaluate_gives_pixel_accuracy_for_segmentation():
    masks = torch.zeros(4, 8, 8, dtype=torch.int64)
    masks[:, :2] = 2  # a quarter of the pixels are class 2
    split = Split("test", torch.zeros(4, 1, 8, 8, dtype=torch.uint8), masks, 3, MEAN, STD)
    assert evaluate(Constant(label=2, pixels=True), split) == pytest.approx(0.25)


def test_cpu_fast_path_computes_the_same_function(spec):
    model = randomize_(build_model(spec), input_size=(4, 4))  # later blocks see 1x1 maps
    x = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        expected = model(x)
        with _fast_layout(model, torch.device("cpu")) as layout:
            got = model(x.contiguous(memory_format=layout))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert all(t.is_contiguous() for t in model.state_dict().values())
    assert "forward" not in vars(model.features[2].block[1][0])  # the patch is gone


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 0.1, "cosine", warmup_steps=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(50, 100, 0.1, "constant", 0) == 0.1


def test_class_count_mismatch_is_refused(tiny_spec, data):
    with pytest.raises(TrainError, match="set num_classes: 3"):
        train_seed(tiny_spec, data, 1)


@pytest.mark.parametrize("option, message", [
    ({"optimizer": "lamb"}, "unknown optimizer"), ({"schedule": "step"}, "unknown LR"),
    ({"lr": 0.0}, "learning rate must be positive"), ({"batch_size": 0}, "batch size"),
])
def test_bad_options_are_refused(spec, data, option, message):
    with pytest.raises(TrainError, match=message):
        tune(build_model(spec), data, **option)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(spec, data):
    with pytest.raises(TrainError, match="no GPU"):
        tune(build_model(spec), data, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_mixed_precision_finetune_learns(spec, data):
    model = train_seed(spec, data, 40, lr=0.1, batch_size=16, seed=0, device="cuda")
    assert evaluate(model, data.holdout, device="cuda") >= 0.9
