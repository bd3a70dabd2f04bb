"""``kerasarch compare MODEL [MODEL ...] --out DIR``: measure models on this machine (parameters, GMACs,
activation memory, latency at batch 1, throughput at batch 32, peak memory) and write ``compare.md`` with charts.
"""

from __future__ import annotations


def register(sub):
    p = sub.add_parser("compare", help="measure several models and write a markdown report with charts")
    p.add_argument("models", nargs="+", help="registry names or .keras files")
    p.add_argument("--out", required=True, help="output folder for compare.md, compare.json and the PNG charts")
    p.add_argument("--runs", type=int, default=5, help="timed calls per batch size; the median is reported (5)")
    p.add_argument("--warmup", type=int, default=1, help="discarded calls before timing (1)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement (32)")
    p.add_argument("--dtype-policy", default=None, help="Keras dtype policy, e.g. mixed_bfloat16 (float32)")
    p.add_argument("--jit-compile", action="store_true", help="compile with XLA")
    p.add_argument("--input-shape", default=None, help="H,W,C for every model (default: each model's own)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure every model in this process instead of one fresh process per model",
    )
    p.set_defaults(func=run)


def run(args):
    import os

    from kerasarch.analysis.compare import compare
    from kerasarch.commands import parse_input_shape
    from kerasarch.commands.summary import check_model_argument
    from kerasarch.errors import KerasarchError

    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        raise KerasarchError(
            f"--runs and --batch must be >= 1 and --warmup >= 0. Received: runs={args.runs}, "
            f"warmup={args.warmup}, batch={args.batch}"
        )
    for name in args.models:
        check_model_argument(name)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise KerasarchError(f"--out {args.out!r} exists and is not a folder; give the report's folder.")
    results = compare(
        args.models,
        args.out,
        runs=args.runs,
        warmup=args.warmup,
        batch=args.batch,
        dtype_policy=args.dtype_policy,
        jit_compile=args.jit_compile,
        input_shape=parse_input_shape(args.input_shape),
        isolate=not args.in_process,
    )
    key = f"throughput_b{args.batch}"
    print(
        f"{'model':20s} {'params':>10s} {'GMACs':>8s} {'lat b1 ms':>10s} {'img/s b' + str(args.batch):>11s} "
        f"{'peak MB':>8s}"
    )
    for r in results:
        print(
            f"{r['model']:20s} {r['params'] / 1e6:9.2f}M {r['gmacs']:8.3f} {r['latency_ms']:10.1f} "
            f"{r[key]:11.1f} {r['peak_rss_mb']:8.0f}"
        )
    print(f"Wrote {args.out}/compare.md")
    return 0
