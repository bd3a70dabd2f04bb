"""``kerasarch train NAME --data mnist5k|digits|DIR|tfds:NAME ...``: trains a registered model with its paper's
recipe, writes the run folder and prints the test accuracy.

Data: ``mnist5k`` and ``digits`` are the built-in offline sets (their held-out test split is evaluated after every
epoch and at the end); ``DIR`` is a folder of class sub-folders (``DIR/train`` and ``DIR/test`` or ``DIR/val``
when present, else a seeded ``--val-split`` of ``DIR``); ``tfds:NAME`` reads a TFDS data set from ``--data-dir``
(its ``test`` split, else ``validation``, is the test set).

Example (the README's main job: LeNet-5 on the 5,000 MNIST digits, ≥ 97.5% test accuracy in a few minutes on two
CPU cores)::

    kerasarch train lenet5 --data mnist5k --out runs/lenet5
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from kerasarch.errors import KerasarchError


def register(sub):
    p = sub.add_parser(
        "train",
        help="train a model with its paper's recipe and print its test accuracy",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("name", help="registered model name, e.g. lenet5, resnet20")
    p.add_argument("--data", required=True, help="mnist5k, digits, an image folder, or tfds:NAME")
    p.add_argument(
        "--out",
        default=None,
        help="run folder (checkpoints, logs, recipe.json, model.keras); an existing one is resumed",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="start from these weights: imagenet, imagenet:torchvision, imagenet:keras, or a .h5, .pth, "
        ".safetensors, .keras or .weights.h5 file (a new classifier when the class count differs)",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument(
        "--recipe", default="paper", help="'paper' (default), a recipe name, a JSON file, or a JSON object of overrides"
    )
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (scales the lr linearly)")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--augment", default=None, help="override the augmentation preset")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--strategy", default="auto", choices=["auto", "mirrored", "multi_worker", "none"])
    p.add_argument("--jit", default="auto", choices=["auto", "on", "off"], help="XLA compilation of the step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic TensorFlow ops (bit-exact resume)")
    p.add_argument("--image-size", type=int, default=None, help="resize folder/TFDS images to this size first")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (a prepared one works offline)")
    p.add_argument("--download", action="store_true", help="let TFDS download and prepare the data set")
    p.add_argument("--val-split", type=float, default=0.1, help="held-out fraction of a folder without train/test")
    p.add_argument("--fresh", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument(
        "--verbose",
        default="auto",
        choices=["auto", "0", "1", "2"],
        help="auto: a progress bar on a terminal, one line per epoch otherwise",
    )
    p.set_defaults(func=run)


def _load_data(args, strategy_name):
    from kerasarch import data
    from kerasarch.data.sources import parse_data_source

    source = args.data
    parsed = parse_data_source(source)
    if parsed.kind == "builtin":
        train, test = data.load(source)
        return train, test, source
    if parsed.kind == "tfds":
        name = parsed.name
        train = data.from_tfds(name, "train", args.data_dir, download=args.download, image_size=args.image_size)
        for split in ("test", "validation"):
            try:
                test = data.from_tfds(name, split, args.data_dir, image_size=args.image_size)
                return train, test, f"{source} ({split} split)"
            except (ValueError, KeyError):
                continue
        raise KerasarchError(f"TFDS data set {name!r} has neither a 'test' nor a 'validation' split.")
    if parsed.kind == "folder":
        train_dir = os.path.join(source, "train")
        if os.path.isdir(train_dir):
            for name in ("test", "val", "validation"):
                if os.path.isdir(os.path.join(source, name)):
                    train = data.from_directory(train_dir, args.image_size)
                    test = data.from_directory(
                        os.path.join(source, name), args.image_size, class_names=train.class_names
                    )
                    return train, test, os.path.join(source, name)
        train, test = data.from_directory(
            source, args.image_size, validation_split=args.val_split, subset="both", seed=args.seed
        )
        return train, test, f"{source} ({args.val_split:.0%} held out)"
    raise AssertionError(parsed)


def check_args(args):
    """Refuses arguments that cannot train, before any data is read: what was received and what is allowed."""
    from kerasarch.data.sources import parse_data_source
    from kerasarch.registry import get_spec

    get_spec(args.name)  # an unknown model: the closest names
    parse_data_source(args.data)
    for flag, value in (
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
        ("--image-size", args.image_size),
    ):
        if value is not None and value < 1:
            raise KerasarchError(f"{flag} must be an integer >= 1. Received: {flag} {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise KerasarchError(f"--lr must be a finite number > 0. Received: --lr {args.lr}")
    if not (0 < args.val_split < 1):
        raise KerasarchError(
            f"--val-split must be a fraction strictly between 0 and 1. Received: --val-split {args.val_split}"
        )
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise KerasarchError(f"--out {args.out!r} exists and is not a folder; give a run folder (new or earlier).")
    recipe = args.recipe
    if recipe.lstrip().startswith("{"):
        try:
            recipe = json.loads(recipe)
        except json.JSONDecodeError as e:
            raise KerasarchError(
                f"--recipe is not valid JSON ({e.msg} at character {e.pos}). Received: --recipe {args.recipe!r}"
            ) from None
        if not isinstance(recipe, dict):
            raise KerasarchError(f"--recipe JSON must be an object of overrides. Received: {args.recipe!r}")
    return recipe


def run(args):
    from kerasarch.training.distribute import make_strategy, tf_config_workers

    recipe = check_args(args)
    strategy = None if args.strategy == "none" else args.strategy
    if strategy == "multi_worker" or (strategy == "auto" and tf_config_workers() > 1):
        strategy = make_strategy(strategy)  # before any other TensorFlow operation, as TensorFlow requires

    from kerasarch import training

    train_ds, test_ds, test_name = _load_data(args, strategy)
    verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
    jit = {"auto": "auto", "on": True, "off": False}[args.jit]
    start = time.monotonic()
    result = training.train(
        args.name,
        train_ds,
        test_ds,
        recipe=recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        precision=args.precision,
        strategy=strategy,
        jit_compile=jit,
        out_dir=args.out,
        resume=False if args.fresh else "auto",
        seed=args.seed,
        deterministic=args.deterministic,
        verbose=verbose,
        build_kwargs={"weights": args.weights} if args.weights else None,
    )
    seconds = time.monotonic() - start
    if result.stop_reason == "interrupted":
        print("Interrupted: the run folder holds a checkpoint; run the same command again to resume.")
        return 3
    scores = result.evaluate(test_ds)
    from kerasarch.training.distribute import is_chief

    if not is_chief(make_strategy(strategy)):
        return 0
    n = scores["examples"]
    correct = int(round(scores["accuracy"] * n))
    print(
        f"test accuracy {scores['accuracy']:.2%} ({correct}/{n} images of {test_name}), loss "
        f"{scores['loss']:.4f}; {result.recipe['run']['precision']}, {seconds:.0f} s"
        + (f"; stopped: {result.stop_reason}" if result.stop_reason else "")
    )
    if args.out:
        from kerasarch.training.checkpoint import atomic_write_text

        atomic_write_text(
            os.path.join(args.out, "result.json"),
            json.dumps(
                {
                    "model": args.name,
                    "data": args.data,
                    "test_accuracy": scores["accuracy"],
                    "test_loss": scores["loss"],
                    "test_examples": n,
                    "seconds": round(seconds, 1),
                    "precision": result.precision,
                    "stop_reason": result.stop_reason,
                    "argv": sys.argv[1:],
                },
                indent=2,
            ),
        )
    return 0 if result.stop_reason in (None, "stopped") else 2
