"""Latency-table benchmark: fidelity, composition error, prediction rate, profiling cost.

    .venv/bin/python benchmarks/bench_latency.py [--device local-ref] [--variants 100]
        [--input-size 224 --input-size 192]  # fidelity at these sizes (full grids)
        [--profile-cost]  # also time a fresh full table for Large (minutes)

Prints one summary table and writes it to latency_tables/<device>/bench.json.
Everything is measured on this machine now, interleaved with a reference (the host
drifts by up to 2x); run it on a quiet machine for the figures in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from netadapt.latency import entry_keys, load_device, load_table
from netadapt.latency.build import profile
from netadapt.latency.calibrate import random_variants
from netadapt.latency.coverage import required_keys
from netadapt.latency.graphs import (
    entry_model,
    input_shape,
    network_input_shape,
    network_model,
)
from netadapt.latency.measure import fast_ms
from netadapt.latency.table import composed, tables_dir
from netadapt.latency.timers import make_timer
from netadapt.latency.validate import save_validation, validate
from netadapt.spec import at_size, load_spec

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {"large": ROOT / "configs/mobilenetv3_large.yaml",
         "small": ROOT / "configs/mobilenetv3_small.yaml"}


def fidelity(device: str, n: int, sizes: list[int]) -> dict[str, dict]:
    table = load_table(device)
    dev = load_device(device)
    out = {}
    for name, path in SEEDS.items():
        for size in sizes:
            seed = at_size(load_spec(path), size)
            summary, frame = validate(table, dev, seed, n, progress=False)
            save_validation(device, summary, frame)
            out[f"{name}@{size}"] = summary
    return out


def composition_error(device: str, points: int = 40) -> dict[str, float]:
    """Time off-slice points of composed blocks exactly and compare with the composition
    from the two slices, all four entries in one round-robin chunk."""
    dev = load_device(device)
    timer = make_timer(dev)
    rng = random.Random(1)
    errors, shares = [], []
    for _name, path in SEEDS.items():
        seed = load_spec(path)
        seed_keys = [k for _, k in entry_keys(seed) if composed(k)]
        net_ms = None
        for _ in range(points // 2):
            anchor = rng.choice(seed_keys)
            c = rng.randrange(8, anchor.c_in + 1, 8)
            e = rng.randrange(8, anchor.exp + 1, 8)
            o = rng.randrange(8, anchor.out + 1, 8)
            quad = [anchor._replace(c_in=c, exp=e, out=o),
                    anchor._replace(c_in=c, exp=e),
                    anchor._replace(exp=e, out=o),
                    anchor._replace(exp=e)]
            models = [(entry_model(k), input_shape(k)) for k in quad]
            if net_ms is None:
                models.append((network_model(seed), network_input_shape(seed)))
            med = np.median(timer.time(models, 30, 2), axis=1)
            if net_ms is None:
                net_ms = float(med[-1])
            composed = med[1] + med[2] - med[3]
            errors.append(abs(composed / med[0] - 1))
            shares.append(abs(composed - med[0]) / net_ms)
    return {"points": len(errors), "median_block_error": float(np.median(errors)),
            "max_block_error": float(np.max(errors)),
            "median_error_as_share_of_network": float(np.median(shares)),
            "max_error_as_share_of_network": float(np.max(shares))}


def op_models(model: bytes) -> list[tuple[bytes, tuple[int, ...]]]:
    """Every node of a network as its own one-node model (second data inputs of Add / Mul
    become constants): what a table of single ops would time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*m.graph.value_info, *m.graph.input, *m.graph.output]}
    inits = {i.name: i for i in m.graph.initializer}
    out = []
    for node in m.graph.node:
        data = [i for i in node.input if i not in inits]
        consts = [inits[i] for i in node.input if i in inits]
        for extra in data[1:]:
            consts.append(numpy_helper.from_array(
                np.ones(shapes[extra], np.float32), extra))
        g = helper.make_graph(
            [node], "op", [helper.make_tensor_value_info(data[0], TensorProto.FLOAT,
                                                         list(shapes[data[0]]))],
            [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
            initializer=consts)
        om = helper.make_model(g, opset_imports=list(m.opset_import))
        om.ir_version = m.ir_version
        out.append((om.SerializeToString(), shapes[data[0]]))
    return out


def granularity(device: str, variants: int = 6) -> dict[str, dict[str, float]]:
    """Sum of single ops / end to end and sum of blocks / end to end, all timed in one
    round-robin, for each seed and a few reduced variants: the bias of each granularity
    and how constant it is (what one calibration factor can remove)."""
    timer = make_timer(load_device(device))
    out = {}
    for name, path in SEEDS.items():
        seed = load_spec(path)
        ops_ratio, blocks_ratio = [], []
        for spec in [seed, *random_variants(seed, variants, rng_seed=77)]:
            net = network_model(spec)
            shape = network_input_shape(spec)
            blocks = [(entry_model(k), input_shape(k)) for _, k in entry_keys(spec)]
            ops = op_models(net)
            ms = fast_ms(timer.time([(net, shape), *blocks, *ops], 20, 2))
            blocks_ratio.append(ms[1:1 + len(blocks)].sum() / ms[0])
            ops_ratio.append(ms[1 + len(blocks):].sum() / ms[0])
        out[name] = {"ops_over_e2e_mean": float(np.mean(ops_ratio)),
                     "ops_over_e2e_cv": float(np.std(ops_ratio) / np.mean(ops_ratio)),
                     "blocks_over_e2e_mean": float(np.mean(blocks_ratio)),
                     "blocks_over_e2e_cv": float(np.std(blocks_ratio) / np.mean(blocks_ratio)),
                     "networks": variants + 1, "ops": len(op_models(network_model(seed)))}
    return out


def prediction_rate(device: str, n: int = 10_000) -> float:
    table = load_table(device)
    variants = random_variants(load_spec(SEEDS["large"]), n, rng_seed=7)
    t0 = time.perf_counter()
    for v in variants:
        table.predict_ms(v)
    return n / (time.perf_counter() - t0)


def exporter_check(device: str) -> float:
    """Ratio (torch.onnx.export model) / (onnx.helper model) of Large, interleaved:
    validation times the helper-built graph; this shows it is what users deploy."""
    import torch

    from netadapt.export import export_onnx
    from netadapt.model import build_model

    seed = load_spec(SEEDS["large"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.onnx"
        torch.manual_seed(0)
        export_onnx(build_model(seed), seed, path)
        shape = (1, 3, 224, 224)
        ms = make_timer(load_device(device)).time(
            [(path.read_bytes(), shape), (network_model(seed), shape)] * 1, 60, 3)
    med = np.median(ms, axis=1)
    return float(med[0] / med[1])


def profile_cost() -> float:
    """Minutes to build a fresh table for Large (in a temporary root)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "configs").symlink_to(ROOT / "configs")
        os.environ["NETADAPT_ROOT"] = tmp
        try:
            t0 = time.perf_counter()
            profile(load_device("local"), [load_spec(SEEDS["large"])], progress=True)
            return (time.perf_counter() - t0) / 60
        finally:
            del os.environ["NETADAPT_ROOT"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="local-ref")
    ap.add_argument("--variants", type=int, default=100)
    ap.add_argument("--input-size", type=int, action="append", default=None,
                    help="fidelity at these sizes (repeatable; default 224 and 192)")
    ap.add_argument("--profile-cost", action="store_true")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    results: dict = {}
    table = load_table(args.device)
    results["fidelity"] = fid = fidelity(args.device, args.variants,
                                             args.input_size or [224, 192])
    for name, s in fid.items():
        rows.append((f"fidelity {name} ({s['variants']} variants)",
                     f"median {s['median_abs_error']:.1%}, max {s['max_abs_error']:.1%}, "
                     f"<=5% {s['within_5pct']:.0%}, <=10% {s['within_10pct']:.0%}, "
                     f"Spearman {s['spearman']:.3f}",
                     "target: <=10% for >=95%, median <=3%"))
        rows.append(("  other normalisations", f"median |error| vs reference block "
                     f"{s['median_abs_error_vs_ref_block']:.1%}; raw (drift included) "
                     f"{s['median_abs_error_raw']:.1%}; mean signed {s['mean_error']:+.1%}",
                     "measured = variant / seed in the same runs x seed at calibration"))
    results["composition"] = comp = composition_error(args.device)
    rows.append(("composed blocks (off-slice points)",
                 f"median {comp['median_block_error']:.1%} of the block, max "
                 f"{comp['max_block_error']:.1%}; max {comp['max_error_as_share_of_network']:.2%}"
                 f" of the network", f"{comp['points']} points"))
    results["granularity"] = gran = granularity(args.device)
    for name, g in gran.items():
        rows.append((f"granularity {name}: sum / end to end",
                     f"{g['ops']} single ops {g['ops_over_e2e_mean']:.2f} (cv "
                     f"{g['ops_over_e2e_cv']:.1%}), blocks {g['blocks_over_e2e_mean']:.2f} "
                     f"(cv {g['blocks_over_e2e_cv']:.1%})", f"{g['networks']} networks"))
    results["predictions_per_s"] = rate = prediction_rate(args.device)
    rows.append(("predictions per second", f"{rate:,.0f}", "target >= 10,000"))
    results["torch_export_over_helper"] = ratio = exporter_check(args.device)
    rows.append(("torch.onnx.export / onnx.helper graph (Large)", f"{ratio:.3f}",
                 "validation's e2e graph vs the deployed export"))
    sizes = {n: len(required_keys(load_spec(p))) for n, p in SEEDS.items()}
    results["entries"] = sizes
    rows.append(("entries per seed", ", ".join(f"{k} {v:,}" for k, v in sizes.items()),
                 f"table holds {len(table):,}"))
    prof_meta = table.meta.get("profiling", {})
    rows.append(("last profile run (table build)", f"{prof_meta.get('last_run_s', 0) / 60:.1f} "
                 f"min, {prof_meta.get('last_run_entries', 0):,} timings",
                 "from meta.json"))
    if args.profile_cost:
        results["large_full_table_min"] = minutes = profile_cost()
        rows.append(("fresh full table, Large", f"{minutes:.1f} min", "target <= 20 min"))
    try:
        pixel = load_table("pixel")
        for name, row in pixel.meta.get("estimate_fit", {}).get("fit", {}).items():
            spec = load_spec(ROOT / name)
            est = pixel.predict_ms(spec)
            rows.append((f"pixel ESTIMATE {Path(name).stem}",
                         f"{est:.1f} ms vs published {row['published_ms']} ms "
                         f"({est / row['published_ms'] - 1:+.1%})", "target within 10%"))
    except Exception as exc:  # the bench still reports the rest
        rows.append(("pixel ESTIMATE", f"unavailable: {exc}", ""))
    width = max(len(r[0]) for r in rows)
    print(f"\nlatency benchmark, device {table.label()}\n")
    for a, b, c in rows:
        print(f"{a:<{width}}  {b}   {c}")
    out = tables_dir() / args.device / "bench.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
