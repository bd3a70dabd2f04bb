"""The lecture's comparison (Canziani, Paszke & Culurciello 2016, arXiv:1605.07678, Figs. 2-3) with every published
checkpoint: ImageNet top-1 against multiply-adds, forward time and memory.

Every registered variant with published weights (``kerasarch.list_models(pretrained=True)``) is built at its own
input size with random weights (the cost does not depend on the values) and measured in this process with
``kerasarch.analysis.benchmark.measure``: float32, batch 1, ``--warmup`` discarded calls, the median of ``--runs``
timed calls. Memory is counted from the layers: the parameters plus the largest set of activations alive at once for
one image (float32). The top-1 figures are the publishers' (the checkpoint table), never measured here.

Writes ``OUT/checkpoints.json`` (points, costs, machine; rewritten after every model, so an interrupted run keeps what
it measured and ``--resume`` continues it) and ``OUT/checkpoints_top1.png``::

    python bench/checkpoints_chart.py --out docs/img/compare             # every variant, a few minutes on 2 cores
    python bench/checkpoints_chart.py --out docs/img/compare --no-measure  # the multiply-adds panel only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for checkpoints.json and checkpoints_top1.png")
    p.add_argument("--runs", type=int, default=3, help="timed calls per model (the median is kept)")
    p.add_argument("--warmup", type=int, default=1, help="discarded calls per model")
    p.add_argument("--no-measure", action="store_true", help="draw the multiply-adds panel only")
    p.add_argument("--resume", action="store_true", help="keep the costs already in OUT/checkpoints.json")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error(f"--runs must be >= 1 and --warmup >= 0. Received: --runs {args.runs} --warmup {args.warmup}")

    from kerasarch.analysis.benchmark import machine_info, measure
    from kerasarch.analysis.charts import checkpoints_chart, published_top1

    os.makedirs(args.out, exist_ok=True)
    record_path = os.path.join(args.out, "checkpoints.json")
    points = published_top1()
    costs, machine = {}, machine_info()
    if args.resume and os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        costs, machine = record.get("costs", {}), record.get("machine", machine)  # the measurements' machine
    if not args.no_measure:
        for i, point in enumerate(points):
            name = point["model"]
            if name in costs:
                continue
            t0 = time.perf_counter()
            r = measure(name, batch_sizes=(1,), runs=args.runs, warmup=args.warmup)
            costs[name] = {
                "latency_ms": r["latency_ms"],
                "times_s": r["times_s"]["1"],
                "memory_mb": round(r["param_mb"] + r["working_set_mb"], 2),
                "param_mb": r["param_mb"],
                "working_set_mb": r["working_set_mb"],
                "gmacs_counted": r["gmacs"],
                "load_average": [round(v, 2) for v in os.getloadavg()],
            }
            print(
                f"[{i + 1}/{len(points)}] {name}: {r['latency_ms']:.1f} ms, {costs[name]['memory_mb']:.0f} MB "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            _write(record_path, points, costs, machine, args)
    _write(record_path, points, costs, machine, args)
    where = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
    loads = [c["load_average"][0] for c in costs.values() if c.get("load_average")]
    if loads:
        where += f", 1-minute load {min(loads):.1f}-{max(loads):.1f} (other jobs: the times are noisy)"
    png = checkpoints_chart(
        points,
        os.path.join(args.out, "checkpoints_top1.png"),
        title="Published ImageNet top-1 vs. multiply-adds, forward time and memory, every checkpoint"
        if costs
        else "Published ImageNet top-1 vs. multiply-adds, every checkpoint",
        costs=costs or None,
        machine=where,
    )
    print(f"{len(points)} variants, {len(costs)} measured -> {png}")
    return 0


def _write(path, points, costs, machine, args):
    record = {
        "points": points,
        "costs": costs,
        "machine": machine,
        "settings": {"runs": args.runs, "warmup": args.warmup, "batch": 1, "dtype": "float32"},
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
