"""The seed: the network the search starts from, with its weights and its record.

Given weights (netadapt or torchvision) are loaded strictly, except an output layer made
for another class count, which is re-initialised and fitted first. Without weights the
seed is trained from scratch and cached per user, keyed by everything that decides its
weights (spec, data, training recipe, torch version): ``$NETADAPT_CACHE`` when set, else
``$XDG_CACHE_HOME/netadapt`` (``~/.cache/netadapt``). Cache files are written atomically,
so a kill mid-write never leaves a half seed that a later run would trust.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .context import SearchContext
from .errors import WeightsError
from .files import write_text_atomic
from .jobs import recalibrated
from .model import build_model, check_state_dict, read_state_dict, save_state_dict
from .records import SeedRecord
from .search import resources_of

CACHE_ENV = "NETADAPT_CACHE"
CLASSIFIER_FIT_STEPS = 200  # a classifier for another class count, before the search


def load_seed_weights(model: torch.nn.Module, path: str, num_classes: int) -> list[str]:
    """Load a netadapt / torchvision checkpoint strictly, except that output layers made
    for another class count (e.g. ImageNet's 1000) keep their fresh initialisation.
    Returns the names of those re-initialised tensors."""
    state = read_state_dict(path)
    own = model.state_dict()
    reinit = sorted(k for k, t in own.items() if k in state and t.dim() >= 1
                    and t.shape[0] == num_classes and state[k].shape[0] != num_classes
                    and state[k].shape[1:] == t.shape[1:])
    for key in reinit:
        state[key] = own[key]
    check_state_dict(model, state, path)
    model.load_state_dict(state)
    return reinit


def check_seed_weights(ctx: SearchContext) -> None:
    """Refuse, before any work, weights that do not fit the seed spec."""
    if ctx.config.weights and not (ctx.run.path / "seed.pt").exists():
        load_seed_weights(build_model(ctx.seed_spec), ctx.config.weights,
                          ctx.seed_spec.num_classes)


def prepare_seed(ctx: SearchContext) -> SeedRecord:
    """The seed's weights (loaded and fitted, or trained / taken from the cache) saved as
    RUN/seed.pt, scored on the holdout split, and journaled."""
    from .scoring import score_model

    cfg = ctx.config
    model = build_model(ctx.seed_spec)
    notes = _load_given(ctx, model) if cfg.weights else _load_trained(ctx, model)
    ctx.run.write_spec("seed.yaml", ctx.seed_spec)
    ctx.run.save_state("seed.pt", model.state_dict())
    # Scored as its children will be (BN re-estimated on a copy), so that dAcc compares
    # weights, not protocols.
    with ctx.clock.phase("evaluate"):
        accuracy, _, extra = score_model(
            recalibrated(copy.deepcopy(model), ctx.data, cfg.batch_size, ctx.seed_for(0),
                         ctx.torch_device),
            ctx.data.holdout, ctx.data.num_classes, batch_size=256, device=ctx.torch_device)
    record = SeedRecord(accuracy=accuracy, trained_steps=0 if cfg.weights else cfg.seed_steps,
                        notes=notes, accuracy_protocol="BN re-estimated", metric=ctx.metric,
                        pixel_accuracy=extra.get("pixel_accuracy"),
                        holdout_px=ctx.data.resolution,
                        **resources_of(ctx.seed_spec, ctx.predict_ms))
    ctx.finish_phase(record)
    return record


def _load_given(ctx: SearchContext, model: torch.nn.Module) -> list[str]:
    """The user's weights; a classifier for another class count is fitted first, so that
    dAcc means what it says."""
    from .train import fit_layers

    cfg = ctx.config
    assert cfg.weights is not None
    fresh = load_seed_weights(model, cfg.weights, ctx.seed_spec.num_classes)
    if not fresh:
        return []
    with ctx.clock.phase("train"):
        fit_layers(model, ctx.data, fresh, CLASSIFIER_FIT_STEPS, lr=cfg.lr * 5,
                   batch_size=cfg.batch_size, seed=cfg.seed, device=ctx.torch_device,
                   progress=ctx.progress("fit the new classifier", CLASSIFIER_FIT_STEPS))
    return [f"re-initialised {', '.join(fresh)} (the checkpoint has another class count) "
            f"and fitted them {CLASSIFIER_FIT_STEPS} steps, the rest frozen"]


def _load_trained(ctx: SearchContext, model: torch.nn.Module) -> list[str]:
    """A seed trained from scratch (a larger LR than fine-tuning's pays off there), or the
    cached one of the same recipe."""
    from .train import train_seed

    cfg = ctx.config

    def train() -> dict[str, torch.Tensor]:
        with ctx.clock.phase("train"):
            trained = train_seed(ctx.seed_spec, ctx.data, steps=cfg.seed_steps, lr=cfg.lr * 5,
                                 batch_size=cfg.batch_size, seed=cfg.seed,
                                 device=ctx.torch_device,
                                 progress=ctx.progress("train seed", cfg.seed_steps),
                                 checkpoint=ctx.checkpoint("seed"))
        return {k: v.cpu() for k, v in trained.state_dict().items()}

    state, path, hit = cached_seed(seed_recipe(ctx), train)
    model.load_state_dict(state)
    return [f"{'reused the cached seed' if hit else 'trained the seed; cached'} {path}"]


def seed_recipe(ctx: SearchContext) -> dict[str, Any]:
    """Everything that decides a seed trained from scratch: its cache key."""
    cfg, data = ctx.config, ctx.data.description
    return {"spec": ctx.seed_spec.to_dict(),
            "data": {k: data[k] for k in ("source", "format", "resolution", "in_channels",
                                          "classes", "seed", "sizes", "split_sha256")},
            "steps": cfg.seed_steps, "lr": cfg.lr * 5, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "schedule": "cosine, warm-up min(100, steps // 20)",
            "torch_device": torch.device(ctx.torch_device).type}


def cache_dir() -> Path:
    """Where trained seeds are kept (``$NETADAPT_CACHE`` overrides the user cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "netadapt"


def seed_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a seed's recipe (spec, data, training, torch version)."""
    text = json.dumps({**recipe, "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_seed(recipe: dict[str, Any],
                train: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor],
                                                                      Path, bool]:
    """The seed weights for ``recipe``: read from the cache, or trained by ``train()``
    and stored. Returns (state_dict, cache file, whether it came from the cache)."""
    key = seed_key(recipe)
    folder = cache_dir() / "seeds"
    path = folder / f"{key}.pt"
    if path.is_file():
        try:
            return read_state_dict(path), path, True
        except WeightsError:  # unreadable (e.g. a foreign file): train it again
            pass
    state = train()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict(state, path)
        write_text_atomic(folder / f"{key}.json", json.dumps(recipe, indent=2, default=str))
    except OSError:  # a read-only or full cache only costs the next run a retraining
        pass
    return state, path, False
