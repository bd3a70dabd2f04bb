"""Issue 11, item 9: one error convention for both command lines.

Every sub-command of ``kerasarch`` and ``finetune`` — enumerated from their argparse parsers, so a sub-command added
later is covered the day it is registered — is driven with bad arguments: an unknown option, a value of the wrong
type, and a value of the right type that names nothing (a model, a data set, a features folder that does not
exist). Each must answer with exactly one ``<prog> <command>: error: ...`` line, exit status 2 and no traceback.
The calls run in one fresh interpreter (one TensorFlow import for all of them) through the same ``main`` functions
the console entry points call; a few run as real ``python -m`` processes end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": REPO}
BAD = "no_such_model_xyz"

# A driver run in a fresh interpreter: {"calls": [[prog, argv], ...]} on stdin -> one JSON result per call.
_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from kerasarch.cli import main as kerasarch_main
    from finetune.cli import main as finetune_main

    calls = json.load(sys.stdin)
    results = []
    for prog, argv in calls:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = (kerasarch_main if prog == "kerasarch" else finetune_main)(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # a traceback the user would have seen
                import traceback
                traceback.print_exc(file=err)
                rc = "uncaught " + type(e).__name__
        results.append({"prog": prog, "argv": argv, "rc": rc, "stderr": err.getvalue()})
    print("RESULTS " + json.dumps(results))
""")


def _sub_parsers(prog):
    if prog == "kerasarch":
        from kerasarch.cli import make_parser
    else:
        from finetune.cli import make_parser
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _bad_calls(prog, name, parser, tmp):
    """Bad invocations of one sub-command, built from its parser."""
    calls = [[name, "--no-such-option"]]
    typed = [a for a in parser._actions if a.option_strings and a.type in (int, float)]
    if typed:
        calls.append([name, typed[0].option_strings[0], "not-a-number"])
    # Right types, naming nothing that exists: every positional and every required option filled in.
    argv = [name]
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction) or a.dest == "debug":
            continue
        if not a.option_strings:
            if a.nargs == "?":
                argv.append(BAD)
            else:
                argv.append(BAD if a.dest in ("model", "models", "name") else os.path.join(tmp, f"missing_{a.dest}"))
        elif a.dest in ("model", "models", "data") or a.required:
            value = (
                a.choices[0]
                if a.choices
                else (BAD if a.dest in ("model", "models") else os.path.join(tmp, f"missing_{a.dest}"))
            )
            argv += [a.option_strings[0], str(value)]
    calls.append(argv)
    return [[prog, c] for c in calls]


# Semantic mistakes the issue names, each with the sub-command it belongs to.
def _named_cases(tmp):
    not_json = os.path.join(tmp, "corrupt.keras")
    with open(not_json, "wb") as f:
        f.write(b"PK\x03\x04 this is not a zip archive")
    a_file = os.path.join(tmp, "a_file.txt")
    with open(a_file, "w") as f:
        f.write("mine")
    broken_run = os.path.join(tmp, "broken_run")
    os.makedirs(broken_run)
    with open(os.path.join(broken_run, "checkpoint.npz"), "wb") as f:
        f.write(b"PK\x03\x04" + bytes(100))  # a run folder whose checkpoint was damaged
    from tests.helpers import torch_checkpoint_bytes

    crafted = os.path.join(tmp, "crafted.pth")  # issue 11's segfault: a view far outside its 96-byte storage
    with open(crafted, "wb") as f:
        f.write(
            torch_checkpoint_bytes(
                {"features.0.weight": ("0", 24, 1 << 33, (64, 3, 3, 3), (27, 9, 3, 1))}, {"0": bytes(96)}
            )
        )
    return [
        [
            "kerasarch",
            [
                "export",
                "squeezenet1_1",
                "--weights",
                crafted,
                "--format",
                "tflite",
                "--out",
                os.path.join(tmp, "exported"),
            ],
        ],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--epochs", "1", "--out", broken_run]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--epochs", "1", "--out", "/proc/no_such_dir/run"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--epochs", "0"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--lr", "-0.5"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--lr", "nan"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--val-split", "1.5"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--image-size", "0"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--recipe", "{not json"]],
        ["kerasarch", ["train", "lenet5", "--data", "digits", "--out", a_file]],
        ["kerasarch", ["train", BAD, "--data", "digits"]],
        ["kerasarch", ["train", "lenet5", "--data", f"tfds:{BAD}", "--data-dir", tmp]],
        ["kerasarch", ["summary", not_json]],
        ["kerasarch", ["summary", "lenet5", "--input-shape", "32,a,1"]],
        ["kerasarch", ["compare", "lenet5", BAD, "--out", os.path.join(tmp, "cmp")]],
        ["kerasarch", ["compare", "lenet5", "--out", a_file]],
        ["kerasarch", ["list", "--family", "nosuchfamily"]],
        [
            "finetune",
            ["extract", "lenet5", "digits", "--tap", "C5", "--out", os.path.join(tmp, "f"), "--weights", "imagenet"],
        ],
    ]


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if ": error:" in line]


def _check(result):
    prog, argv, rc, stderr = result["prog"], result["argv"], result["rc"], result["stderr"]
    label = f"{prog} {' '.join(argv)}"
    assert "Traceback" not in stderr, f"{label}: traceback shown\n{stderr}"
    assert rc == 2, f"{label}: exit status {rc}, expected 2\n{stderr}"
    lines = _error_lines(stderr)
    assert len(lines) == 1, f"{label}: expected one error line\n{stderr}"
    assert lines[0].startswith(f"{prog} {argv[0]}: error: ") or lines[0].startswith(f"{prog}: error: "), lines[0]
    assert stderr.strip().splitlines()[-1] == lines[0], f"{label}: the error is not the last line\n{stderr}"
    return lines[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cli"))
    calls = []
    for prog in ("kerasarch", "finetune"):
        for name, parser in _sub_parsers(prog).items():
            calls += _bad_calls(prog, name, parser, tmp)
    calls += _named_cases(tmp)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        cwd=tmp,
        env=ENV,
        timeout=600,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {" ".join([r["prog"], *r["argv"]]).replace(tmp, "TMP"): r for r in json.loads(line[0][8:])}, tmp


def test_every_sub_command_answers_bad_arguments_with_one_error_line(results):
    by_call, _ = results
    for prog in ("kerasarch", "finetune"):
        for name in _sub_parsers(prog):
            mine = [r for r in by_call.values() if r["prog"] == prog and r["argv"][0] == name]
            assert len(mine) >= 2, (prog, name)
            for r in mine:
                _check(r)


def test_named_mistakes_say_what_was_received_and_what_is_allowed(results):
    by_call, tmp = results
    want = {
        "kerasarch train lenet5 --data digits --epochs 0": "--epochs must be an integer >= 1. Received: --epochs 0",
        "kerasarch train lenet5 --data digits --lr -0.5": "--lr must be a finite number > 0. Received: --lr -0.5",
        "kerasarch train lenet5 --data digits --lr nan": "Received: --lr nan",
        "kerasarch train lenet5 --data digits --val-split 1.5": "strictly between 0 and 1. Received: --val-split 1.5",
        "kerasarch train lenet5 --data digits --image-size 0": "--image-size must be an integer >= 1",
        "kerasarch train lenet5 --data digits --recipe {not json": "--recipe is not valid JSON",
        "kerasarch train lenet5 --data digits --out TMP/a_file.txt": "exists and is not a folder",
        f"kerasarch train {BAD} --data digits": f"Unknown model name '{BAD}'",
        f"kerasarch train lenet5 --data tfds:{BAD} --data-dir TMP": f"TFDS data set '{BAD}'",
        "kerasarch summary TMP/corrupt.keras": "is not a .keras model file (not a zip archive)",
        "kerasarch summary lenet5 --input-shape 32,a,1": "--input-shape must look like 224,224,3",
        f"kerasarch compare lenet5 {BAD} --out TMP/cmp": f"Unknown model name '{BAD}'",
        "kerasarch compare lenet5 --out TMP/a_file.txt": "exists and is not a folder",
        "kerasarch list --family nosuchfamily": "--family must be one of",
        "kerasarch export squeezenet1_1 --weights TMP/crafted.pth --format tflite --out TMP/exported": (
            "'TMP/crafted.pth': tensor 'features.0.weight': offset 8589934592"
        ),
        "kerasarch train lenet5 --data digits --epochs 1 --out TMP/broken_run": (
            "Checkpoint 'TMP/broken_run/checkpoint.npz' is not readable"
        ),
        "kerasarch train lenet5 --data digits --epochs 1 --out /proc/no_such_dir/run": "'/proc/no_such_dir",
    }
    for call, text in want.items():
        line = _check(by_call[call])
        assert text in line.replace(tmp, "TMP"), (call, line)
    assert "not found" not in _check(by_call["kerasarch summary TMP/corrupt.keras"]).lower()
    # `--weights imagenet` is a name, not a file: never "Weights file not found".
    line = _check(next(r for c, r in by_call.items() if c.startswith("finetune extract lenet5 digits")))
    assert "Weights file not found" not in line
    assert not os.path.exists(os.path.join(tmp, "cmp")), "compare did work before refusing an unknown model"


def test_real_processes_exit_2_with_one_line_and_debug_shows_the_traceback(tmp_path):
    for cmd, prefix in (
        (
            [sys.executable, "-m", "kerasarch", "train", "lenet5", "--data", "digits", "--val-split", "1.5"],
            "kerasarch train: error: ",
        ),
        ([sys.executable, "-m", "finetune", "linear", str(tmp_path / "nothing")], "finetune linear: error: "),
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert [line for line in proc.stderr.splitlines() if ": error:" in line][0].startswith(prefix), proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "kerasarch", "summary", BAD, "--debug"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and f"Unknown model name '{BAD}'" in proc.stderr
