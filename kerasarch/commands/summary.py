"""``kerasarch summary MODEL``: per-layer parameters, multiply-adds, activations and receptive fields, with totals;
for a ``.keras`` file, its model card first (what it is, its input convention, classes, weights, training).

A rich table on a terminal, a plain table otherwise; ``--format markdown|csv|json`` for files.
"""

from __future__ import annotations

import sys


def check_model_argument(name):
    """Refuses a ``.keras`` path that is missing or not a Keras archive, and an unknown registry name, naming what
    was received (a corrupt file is never reported as missing)."""
    import os
    import zipfile

    from kerasarch.errors import KerasarchError
    from kerasarch.registry import get_spec

    if not name.lower().endswith(".keras"):
        get_spec(name)  # an unknown name: the closest registered ones
        return
    if not os.path.exists(name):
        raise FileNotFoundError(2, "Model file not found", name)
    if not zipfile.is_zipfile(name):
        raise KerasarchError(f"{name!r} is not a .keras model file (not a zip archive): truncated or corrupt.")
    try:
        with zipfile.ZipFile(name) as zf:
            members = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise KerasarchError(f"{name!r} is not a readable .keras model file: {e}") from e
    if "config.json" not in members:
        raise KerasarchError(f"{name!r} is a zip archive without config.json: not a .keras model file.")


def load_error(name, error):
    """The one-line error for a ``.keras`` file that Keras could not load."""
    from kerasarch.errors import KerasarchError

    message = " ".join(str(error).split())[:300]
    return KerasarchError(
        f"Cannot load model file {name!r} (corrupt or made by another program): {type(error).__name__}: {message}"
    )


def register(sub):
    p = sub.add_parser("summary", help="per-layer parameters, MACs, activations and receptive fields of a model")
    p.add_argument("model", help="a registry name (see `kerasarch list`) or a .keras file")
    p.add_argument("--input-shape", default=None, help="H,W,C (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the memory figures (default 1)")
    p.add_argument(
        "--dtype-policy",
        default=None,
        help="build under this Keras dtype policy, e.g. mixed_bfloat16 (registry names only)",
    )
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--out", default=None, help="write to this file instead of standard output")
    p.add_argument("--card", action="store_true", help="print only the model card (a .keras file or a registry name)")
    p.set_defaults(func=run)


def card_text(model):
    """The model card of a ``.keras`` file (read without loading the model) or of a registry name, as text."""
    from kerasarch.card import read_card

    if str(model).lower().endswith(".keras"):
        card = read_card(model)
        if card is None:
            return f"{model}: no kerasarch model card (saved from a model kerasarch did not build)\n"
        return f"Model card of {model}\n{card.summary()}\n"
    from kerasarch.registry import get_spec

    return f"Model card of {model} (as built)\n{get_spec(model).card().summary()}\n"


def _plain_table(p):
    from kerasarch.analysis.profile import format_receptive_field, format_shape

    header = ("layer", "type", "output", "params", "MACs", "other ops", "activations", "RF")
    body = [
        (
            r.name,
            r.type,
            format_shape(r.output_shape),
            f"{r.params:,}",
            f"{r.macs:,}" + ("*" if r.estimated else ""),
            f"{r.other_ops:,}",
            f"{r.activations:,}" if r.stored else f"({r.activations:,})",
            format_receptive_field(r.receptive_field),
        )
        for r in p.rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = {3, 4, 5, 6}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"{p.model_name}", line(header), line(tuple("-" * w for w in widths))]
    out += [line(b) for b in body]
    out.append("")
    out += [f"{k}: {v}" for k, v in p.totals_lines()]
    return "\n".join(out) + "\n"


def _rich_table(p):
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from kerasarch.analysis.profile import format_receptive_field, format_shape

    console = Console(highlight=False)
    table = Table(title=f"{p.model_name}", box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    header = ("layer", "type", "output", "params", "MACs", "other ops", "activations", "RF")
    cells = [
        (
            r.name,
            r.type,
            format_shape(r.output_shape),
            f"{r.params:,}" if r.params else "",
            (f"{r.macs:,}" + ("*" if r.estimated else "")) if r.macs else "",
            f"{r.other_ops:,}" if r.other_ops else "",
            f"{r.activations:,}" if r.stored else f"({r.activations:,})",
            format_receptive_field(r.receptive_field),
        )
        for r in p.rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    keep = list(range(len(header)))
    # On a narrow terminal drop the least essential columns rather than cut numbers.
    for drop in (5, 7, 1):
        if sum(widths[i] + 2 for i in keep) <= console.width:
            break
        keep.remove(drop)
    for i in keep:
        table.add_column(
            header[i],
            justify="left" if i < 3 else "right",
            no_wrap=True,
            min_width=widths[i] if i >= 2 else None,
            overflow="ellipsis",
        )
    for c in cells:
        styled = [c[i] if not (i == 6 and c[i].startswith("(")) else f"[dim]{c[i]}[/dim]" for i in keep]
        table.add_row(*styled)
    console.print(table)
    for k, v in p.totals_lines():
        console.print(f"[bold]{k}[/bold]: {v}")
    console.print("[dim](activations) are in place or views and are not counted again; * = estimated count[/dim]")


def run(args):
    from kerasarch.training.precision import dtype_policy

    check_model_argument(args.model)
    if args.batch < 1:
        raise SystemExit(f"--batch must be >= 1. Received: --batch {args.batch}")
    with dtype_policy(args.dtype_policy or None):  # restored afterwards (the command runs inside tests too)
        return _report(args)


def _report(args):
    from kerasarch.analysis import profile
    from kerasarch.commands import parse_input_shape

    try:
        card = card_text(args.model) if args.card or str(args.model).lower().endswith(".keras") else ""
    except ValueError as e:
        if args.card:
            raise SystemExit(f"kerasarch summary: error: {e}") from None
        card = ""  # a damaged file: the profile below reports it
    if args.card:
        sys.stdout.write(card)
        return 0
    if card and args.format == "table" and args.out is None:
        sys.stdout.write(card + "\n")
    try:
        p = profile(args.model, input_shape=parse_input_shape(args.input_shape), batch=args.batch)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a damaged archive
        if args.model.lower().endswith(".keras"):
            raise load_error(args.model, e) from e
        raise
    if args.format == "table" and args.out is None and sys.stdout.isatty():
        _rich_table(p)
        return 0
    text = {
        "table": _plain_table,
        "markdown": lambda q: q.to_markdown(),
        "csv": lambda q: q.to_csv(),
        "json": lambda q: q.to_json() + "\n",
    }[args.format](p)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"Wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0
