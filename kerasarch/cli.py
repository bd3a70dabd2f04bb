"""The ``kerasarch`` command. Each module in ``kerasarch/commands`` adds one sub-command through its
``register(subparsers)`` function and sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import sys

from kerasarch._discover import import_submodules


def make_parser():
    parser = argparse.ArgumentParser(prog="kerasarch", description="Classic CNN architectures in Keras 3.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in import_submodules("kerasarch.commands"):
        module.register(sub)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
