"""The last phases of a search: the winner's long-term fine-tune, then what every
compared network gets alike (the result and each baseline): training at its deployed
input size, export to ONNX, and the test accuracy of that file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .context import DEPLOY_SEED, LONG_TERM_SEED, SearchContext, deploy_phase
from .export import deployment_metadata
from .model import build_model, read_state_dict
from .records import FinalRecord
from .rundir import SEED_DEPLOYED, iteration_name
from .search import Iteration, resources_of, unmet
from .spec import NetworkSpec

if TYPE_CHECKING:
    from .data import Data


def long_term(ctx: SearchContext, iterations: list[Iteration]) -> FinalRecord:
    """Fine-tune the last iteration's network (the seed when no iteration ran) for the
    long-term steps, finish it as ``best`` and journal the search's result."""
    from .scoring import score_model
    from .train import finetune

    cfg = ctx.config
    if iterations:
        spec = iterations[-1].chosen.spec
        state = read_state_dict(ctx.run.path / f"{iteration_name(len(iterations))}.pt")
    else:
        spec, state = ctx.seed_spec, read_state_dict(ctx.run.path / "seed.pt")
    model = build_model(spec)
    model.load_state_dict(state)
    with ctx.clock.phase("train"):
        finetune(model, ctx.data, steps=cfg.long_term_steps, lr=cfg.lr,
                 batch_size=cfg.batch_size, seed=ctx.seed_for(LONG_TERM_SEED),
                 device=ctx.torch_device,
                 progress=ctx.progress("long-term fine-tune", cfg.long_term_steps),
                 checkpoint=ctx.checkpoint("long_term"))
    seed_model = build_model(ctx.seed_spec)
    seed_model.load_state_dict(read_state_dict(ctx.run.path / "seed.pt"))
    resources = resources_of(spec, ctx.predict_ms)
    finished = finish_network(ctx, model, spec, "best", ctx.data)
    with ctx.clock.phase("evaluate"):
        seed_test = score_model(seed_model, ctx.data.test, ctx.data.num_classes, 256,
                                ctx.torch_device)[0]
    record = FinalRecord(
        iteration=len(iterations), latency_ms=resources["latency_ms"],
        params=resources["params"], macs=resources["macs"],
        # the training this network got from the seed: what every baseline gets too
        steps=len(iterations) * cfg.short_term_steps + cfg.long_term_steps,
        **finished, seed_test_accuracy=seed_test, seed_test_px=ctx.data.resolution,
        budgets_met=not unmet(resources, ctx.budgets), **_seed_deployed(ctx, seed_model))
    ctx.finish_phase(record)
    return record


def _seed_deployed(ctx: SearchContext, seed_model: torch.nn.Module) -> dict[str, Any]:
    """The seed given the result's training at the deployed size, exported and scored
    there: what the search bought is measured against it at the size that ships (none
    when the search ran at the deployed size: the seed's test accuracy is already there)."""
    if not deploy_steps(ctx, ctx.seed_spec, ctx.data):
        return {}
    finished = finish_network(ctx, seed_model, ctx.seed_spec, SEED_DEPLOYED, ctx.data)
    return {"seed_deploy_test_accuracy": finished["test_accuracy"],
            "seed_deploy_px": finished["test_px"]}


def deploy_steps(ctx: SearchContext, spec: NetworkSpec, data: Data) -> int:
    """Steps at the deployed input size: none when the search already ran at it."""
    same = tuple(spec.input_size) == (data.resolution, data.resolution)
    return 0 if same else ctx.config.deploy_steps


def finish_network(ctx: SearchContext, model: torch.nn.Module, spec: NetworkSpec, name: str,
                   data: Data) -> dict[str, Any]:
    """The last steps every compared network takes alike: holdout accuracy at the
    search's size; when the search ran at a smaller proxy size, ``deploy_steps`` of
    training at the deployed input size (a network trained at 32 px alone scores chance
    at 224 px); export to RUN/``name``.onnx; and the test accuracy of that file, run by
    onnxruntime at its input size: the accuracy of what is shipped. Returns the fields
    the final and baseline records share."""
    from .export import export_onnx
    from .scoring import score_model, score_onnx
    from .train import finetune

    cfg = ctx.config
    with ctx.clock.phase("evaluate"):
        holdout = score_model(model, data.holdout, data.num_classes, 256, ctx.torch_device)[0]
    steps = deploy_steps(ctx, spec, data)
    deployed = data.at(spec.input_size)
    threads = deploy_threads(cfg.threads)
    if steps:
        with _torch_threads(threads), ctx.clock.phase("train"):
            finetune(model, deployed, steps, lr=cfg.deploy_lr, batch_size=cfg.deploy_batch_size,
                     seed=ctx.seed_for(DEPLOY_SEED), device=ctx.torch_device,
                     progress=ctx.progress(f"{name} at {spec.input_size[0]} px", steps),
                     checkpoint=ctx.checkpoint(deploy_phase(name)))
    ctx.run.write_spec(f"{name}.yaml", spec)
    ctx.run.save_state(f"{name}.pt", model.state_dict())
    onnx_path = ctx.run.path / f"{name}.onnx"
    description = ctx.data.description
    export_onnx(model, spec, onnx_path, metadata=deployment_metadata(
        spec, description["mean"], description["std"], description["classes"],
        ctx.predict_ms(spec), cfg.device, ctx.latency.sha256))
    with ctx.clock.phase("evaluate"):
        test, correct, extra = score_onnx(onnx_path, deployed.test, data.num_classes,
                                          threads=threads)
    ctx.run.save_state(f"{name}.test_correct.pt", {"correct": correct})
    return {"accuracy": holdout, "holdout_px": data.resolution, "deploy_steps": steps,
            "test_accuracy": test, "test_pixel_accuracy": extra.get("pixel_accuracy"),
            "test_px": "x".join(str(v) for v in spec.input_size)}


def deploy_threads(configured: int) -> int:
    """Threads for the deployed-size phase. At the deployed size the ops are large enough
    to split across cores (unlike at a 32 px proxy, where one thread is fastest) and
    nothing else of the search runs: every core this process may run on (0: torch's
    default, as configured)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(configured, cores) if configured > 0 else 0


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (0: left as they are) inside the block."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
