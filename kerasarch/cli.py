"""The ``kerasarch`` command. Each module in ``kerasarch/commands`` adds one sub-command through its
``register(subparsers)`` function and sets ``func`` on its parser.

Errors follow one convention (:mod:`kerasarch.errors`): one line ``kerasarch <command>: error: ...`` saying what
was received and what is allowed, exit status 2, the traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys

from kerasarch._discover import import_submodules
from kerasarch.errors import EXIT_USAGE, add_debug_flag, run_command

__all__ = ["OneLineErrorParser", "make_parser", "main"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one ``error:`` line (and a pointer to ``--help``), exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def make_parser():
    parser = OneLineErrorParser(prog="kerasarch", description="Classic CNN architectures in Keras 3.")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in import_submodules("kerasarch.commands"):
        module.register(sub)
    for p in sub.choices.values():
        add_debug_flag(p, sub_command=True)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    return run_command("kerasarch", args)


if __name__ == "__main__":
    sys.exit(main())
