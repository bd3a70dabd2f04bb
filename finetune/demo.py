"""``python -m finetune demo``: the transfer benchmark of ``docs/transfer.md`` (``bench/transfer.py``).

A thin wrapper kept for the old command: it runs ``bench/transfer.py`` of the source checkout this package sits in
(scratch, linear probe, the old two-phase defaults and today's defaults on three offline source -> target pairs, 10
and 50 labels per class, five seeds), passing its arguments on.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from finetune.errors import FinetuneError

__all__ = ["BENCH", "load_bench", "register", "run"]

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "transfer.py")


def load_bench():
    """The ``bench/transfer.py`` module of the source checkout."""
    if not os.path.exists(BENCH):
        raise FinetuneError(
            f"The transfer benchmark is bench/transfer.py of a kerasarch source checkout; it is not "
            f"installed with the package. Looked for: {BENCH!r}"
        )
    spec = importlib.util.spec_from_file_location("kerasarch_bench_transfer", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register(sub):
    p = sub.add_parser(
        "demo",
        help="the transfer benchmark (bench/transfer.py): scratch, probe, old and new defaults",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="bench/transfer.py arguments after --, e.g. -- --pairs lenet5-digits --seeds 1",
    )
    p.set_defaults(func=run)


def run(args):
    rest = list(args.args)
    return load_bench().main(rest[1:] if rest[:1] == ["--"] else rest, prog="finetune demo")
