"""Trained seed networks, cached per user: a seed trained once is reused by later runs
and by the benchmark.

The key is a hash of everything that decides the weights: the spec, the data (source,
split hash, resolution, classes), the training recipe (steps, LR, batch, seed) and the
torch version. The cache lives in ``$NETADAPT_CACHE`` when set, else
``$XDG_CACHE_HOME/netadapt`` (``~/.cache/netadapt``); files are written atomically, so a
kill mid-write never leaves a half seed that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError
from .files import write_text_atomic
from .model import read_state_dict, save_state_dict

CACHE_ENV = "NETADAPT_CACHE"


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
