"""The library's one error type, and how both command lines report errors.

Every error kerasarch raises on purpose for bad input or a bad file is a :class:`KerasarchError` (a
``ValueError``, so ``except ValueError`` keeps working): the torch reader's ``TorchFormatError``, the weights
loader's ``WeightsFileError`` / ``WeightsMismatchError``, ``finetune.FinetuneError``,
``kerasarch.export.ExportError``. Its message says what was received and what is allowed, and names the file
when a file is at fault.

The ``kerasarch`` and ``finetune`` commands run each sub-command through :func:`run_command`: a library error, a
``ValueError``, an ``OSError`` (a missing file, a read-only or full disk) and friends become one line
``<prog> <command>: error: <message>`` on standard error and exit status 2; ``--debug`` shows the traceback
instead.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "KerasarchError",
    "RunLockedError",
    "USAGE_ERRORS",
    "EXIT_USAGE",
    "format_error",
    "run_command",
    "add_debug_flag",
]

EXIT_USAGE = 2


class KerasarchError(ValueError):
    """Bad input or an unusable file; the message says what was received and what is allowed."""


class RunLockedError(KerasarchError):
    """A run folder is in use by another live process."""


# What a command line reports as one ``error:`` line (anything else is a bug and keeps its traceback).
USAGE_ERRORS = (KerasarchError, ValueError, OSError, KeyError, TypeError, EOFError, RuntimeError, ImportError)


def format_error(error: BaseException) -> str:
    """One line for ``error``: its message (an ``OSError`` with the file it concerns), newlines folded."""
    if isinstance(error, OSError) and not isinstance(error, KerasarchError) and error.strerror:
        where = f": {error.filename!r}" if error.filename else ""
        message = f"{error.strerror}{where}"
    elif isinstance(error, KeyError) and len(error.args) == 1:
        message = str(error.args[0])
    else:
        message = str(error) or type(error).__name__
    line = " ".join(message.split())
    return line if len(line) <= 2000 else line[:1997] + "..."


def add_debug_flag(parser, *, sub_command=False) -> None:
    """Adds ``--debug`` (show tracebacks) to ``parser``; on a sub-command's parser it only ever sets it, so
    ``prog --debug COMMAND`` and ``prog COMMAND --debug`` both work."""
    import argparse

    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if sub_command else False,
        help="show the full traceback of an error (also: KERASARCH_DEBUG=1)",
    )


def run_command(prog: str, args, func=None) -> int:
    """Runs ``func(args)`` (default ``args.func``) and maps library errors to one ``error:`` line and status 2.

    With ``args.debug`` (or ``KERASARCH_DEBUG=1``) errors propagate with their traceback. A ``SystemExit`` whose
    code is a message is reported the same way; one with a number passes through.
    """
    func = func or args.func
    debug = bool(getattr(args, "debug", False)) or os.environ.get("KERASARCH_DEBUG") == "1"
    command = getattr(args, "command", None)
    label = f"{prog} {command}" if command else prog
    try:
        return func(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        message = str(e.code)
    except USAGE_ERRORS as e:
        if debug:
            raise
        message = format_error(e)
    for prefix in (f"{label}: error: ", f"{label}: ", f"{prog}: ", "error: "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    print(f"{label}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE
