"""The ``finetune`` command line: ``python -m finetune extract|linear|train|tune|demo ...``.

Console entry points (setup.cfg ``[options.entry_points] console_scripts``)::

    finetune = finetune.cli:main
    finetune-extract = finetune.cli:extract_main
    finetune-linear = finetune.cli:linear_main
    finetune-train = finetune.cli:train_main
    finetune-tune = finetune.cli:tune_main
    finetune-demo = finetune.cli:demo_main
"""

from __future__ import annotations

import importlib
import os
import sys

from kerasarch.cli import OneLineErrorParser
from kerasarch.errors import add_debug_flag, run_command

COMMANDS = ("extract", "linear", "train", "tune", "demo")


def make_parser():
    parser = OneLineErrorParser(prog="finetune", description="Transfer learning with kerasarch networks.")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"finetune.{name}").register(sub)
    for p in sub.choices.values():
        add_debug_flag(p, sub_command=True)
    return parser


def main(argv=None):
    """Runs a command; bad input (a :class:`~finetune.FinetuneError` or any library error, an unreadable file)
    prints one ``error:`` line and exits with 2; ``--debug`` shows the traceback instead
    (:func:`kerasarch.errors.run_command`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = make_parser().parse_args(argv)
    return run_command("finetune", args)


def _command_main(name):
    def entry(argv=None):
        return main([name, *(sys.argv[1:] if argv is None else argv)])

    entry.__name__ = f"{name}_main"
    entry.__doc__ = f"Console entry point ``finetune-{name}``."
    return entry


extract_main = _command_main("extract")
linear_main = _command_main("linear")
train_main = _command_main("train")
tune_main = _command_main("tune")
demo_main = _command_main("demo")

if __name__ == "__main__":
    sys.exit(main())
