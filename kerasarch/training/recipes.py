"""The papers' training recipes, per family, as plain JSON-serialisable dicts.

A recipe holds:

- ``optimizer`` (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``), ``lr``, ``momentum``, ``nesterov``;
- ``batch_size``: the *global* batch (all replicas together); ``lr`` belongs to it. When a run overrides
  ``batch_size`` but not ``lr``, the learning rate is scaled linearly (``lr_scaling="linear"``, Goyal et al. 2017,
  arXiv:1706.02677; ``None`` keeps it);
- ``epochs`` and ``schedule``: ``{"type": "constant"}``; ``{"type": "step", "boundaries": [...], "factor": f}``
  (epochs; ``"fractions"`` of the run instead of ``"boundaries"`` where the paper ties the steps to its length);
  ``{"type": "piecewise", "boundaries": [...], "multipliers": [...]}``; ``{"type": "exponential", "factor": f,
  "every": epochs}``; ``{"type": "poly", "power": p}`` and ``{"type": "cosine"}`` (per step);
  ``{"type": "plateau", "monitor": ..., "factor": f, "patience": epochs, "max_reductions": n}`` (the papers'
  "divide by 10 when the validation error stops improving");
- ``warmup_epochs`` / ``warmup_lr``: a constant learning rate first (ResNet-110's 0.01 until training gets going);
- ``weight_decay``: L2 coefficient λ of the papers (the gradient gains λ·w; applied to kernels, i.e. variables of
  rank ≥ 2, not to biases or BatchNorm parameters), as a loss term so that it passes through momentum as in
  Caffe/Torch;
- ``dropout``: passed to the builder when it takes one (``None``: the builder's default);
- ``aux_loss_weight``: GoogLeNet's auxiliary classifier weight (0.3), ``label_smoothing``;
- ``ema``: a momentum (e.g. 0.999) to train with an exponential moving average of the weights (Polyak averaging)
  that replaces the weights at the end of the run (one replica only);
- ``augment``: a :data:`kerasarch.data.AUGMENTATIONS` preset; ``preprocessing``: the input convention
  (``None``: the model card's, which for a model without pretrained weights is what its default recipe trains
  with);
- ``source`` / ``notes``: where the numbers come from and what deviates.

:func:`get_recipe` resolves ``"paper"``, a named recipe, a JSON file or a dict of overrides.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Mapping

from kerasarch.registry import ModelSpec

__all__ = ["RECIPES", "get_recipe", "recipe_name_for", "lr_at", "PlateauState"]

_SGD = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": False,
    "lr_scaling": "linear",
    "warmup_epochs": 0,
    "warmup_lr": None,
    "weight_decay": 0.0,
    "dropout": None,
    "aux_loss_weight": 0.0,
    "label_smoothing": 0.0,
    "preprocessing": None,
    "ema": None,
}


def _r(**kw):
    return {**_SGD, **kw}


RECIPES = {
    "lenet": _r(
        lr=0.02,
        batch_size=16,
        epochs=30,
        weight_decay=5e-4,
        augment="lenet",
        preprocessing="lecun",
        schedule={"type": "cosine"},
        source="LeCun et al. 1998 §II-A, §III-C; batch, schedule and weight decay tuned on mnist5k",
        notes="SGD with momentum on mini-batches of 16 replaces the paper's stochastic diagonal Levenberg-Marquardt "
        "method, which needed only 20 passes over 60,000 digits (recipe 'lenet_paper' keeps those and the "
        "paper's step-size ladder). With 4,000 training digits (mnist5k), 30 passes with cosine decay and "
        "weight decay 5e-4 gave 97.9-98.6% on the 1,000 test digits over seeds 0-5; 20 passes of the ladder "
        "without weight decay gave 96.4-97.8%. Inputs scaled so the background is -0.1 and the ink 1.175 "
        "(§II-A); training on small random affine distortions of the digits (§III-C).",
    ),
    "lenet_paper": _r(
        lr=0.02,
        batch_size=32,
        epochs=20,
        augment="lenet",
        preprocessing="lecun",
        schedule={"type": "piecewise", "boundaries": [2, 5, 8, 12], "multipliers": [1.0, 0.4, 0.2, 0.1, 0.02]},
        source="LeCun et al. 1998 §II-A, §II-B, §III-C",
        notes="20 passes with the paper's step-size ladder (×1, ×0.4, ×0.2, ×0.1, ×0.02 after passes 2, 5, 8, "
        "12; the paper's global step sizes 5e-4 … 1e-5 belong to SDLM's per-parameter steps); SGD with "
        "momentum on mini-batches of 32; inputs scaled so the background is -0.1 and the ink 1.175 (§II-A); "
        "small random affine distortions (§III-C).",
    ),
    "alexnet": _r(
        lr=0.01,
        batch_size=128,
        epochs=90,
        weight_decay=5e-4,
        dropout=0.5,
        augment="alexnet",
        schedule={"type": "plateau", "monitor": "val_accuracy", "factor": 0.1, "patience": 5, "max_reductions": 3},
        source="Krizhevsky et al. 2012 §5",
        notes="lr 0.01 divided by 10 when the validation error stopped improving (three times in the paper), "
        "about 90 epochs; initial biases of 1 in some layers are not applied.",
    ),
    "zfnet": _r(
        lr=0.01,
        batch_size=128,
        epochs=70,
        weight_decay=5e-4,
        dropout=0.5,
        augment="alexnet",
        schedule={"type": "plateau", "monitor": "val_accuracy", "factor": 0.1, "patience": 5, "max_reductions": 3},
        source="Zeiler & Fergus 2013 §3 (arXiv:1311.2901)",
        notes="lr 0.01 annealed by hand, 70 epochs, dropout 0.5, crops and flips; weight decay as AlexNet (the "
        "paper does not state it); the filter-RMS renormalisation to 0.1 is not applied.",
    ),
    "vgg": _r(
        lr=0.01,
        batch_size=256,
        epochs=74,
        weight_decay=5e-4,
        dropout=0.5,
        augment="vgg",
        schedule={"type": "plateau", "monitor": "val_accuracy", "factor": 0.1, "patience": 5, "max_reductions": 3},
        source="Simonyan & Zisserman 2014 §3.1 (arXiv:1409.1556)",
        notes="lr 0.01 decreased by 10 when validation accuracy stopped improving (3 times), 74 epochs, scale "
        "jittering S ∈ [256, 512].",
    ),
    "googlenet": _r(
        lr=0.01,
        batch_size=32,
        epochs=250,
        weight_decay=2e-4,
        dropout=0.4,
        aux_loss_weight=0.3,
        augment="googlenet",
        schedule={"type": "exponential", "factor": 0.96, "every": 8},
        source="Szegedy et al. 2014 §6 (arXiv:1409.4842); Caffe bvlc_googlenet solver",
        notes="momentum 0.9, lr decreased by 4% every 8 epochs (paper); base lr 0.01, batch 32 and weight decay "
        "2e-4 from Caffe's bvlc_googlenet solver (the paper gives none); auxiliary losses weighted 0.3; "
        "asynchronous SGD and Polyak averaging are not reproduced.",
    ),
    "resnet_imagenet": _r(
        lr=0.1,
        batch_size=256,
        epochs=90,
        weight_decay=1e-4,
        augment="resnet",
        schedule={"type": "step", "boundaries": [30, 60], "factor": 0.1},
        source="He et al. 2015 §3.4 (arXiv:1512.03385)",
        notes="lr 0.1 divided by 10 when the error plateaus — at epochs 30 and 60 as in fb.resnet.torch and "
        "torchvision; weight decay 1e-4 (the paper; the lecture notes say 1e-5); no dropout.",
    ),
    "resnet_cifar": _r(
        lr=0.1,
        batch_size=128,
        epochs=164,
        weight_decay=1e-4,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "step", "fractions": [0.5, 0.75], "factor": 0.1},
        source="He et al. 2015 §4.2",
        notes="64k iterations at batch 128 (164 epochs of 50k images), lr divided by 10 at 32k and 48k; "
        "per-pixel mean subtraction approximated by per-channel normalisation; ResNet-110 and deeper warm "
        "up at 0.01 (here: for the first epoch).",
    ),
    "preact_cifar": _r(
        lr=0.1,
        batch_size=128,
        epochs=164,
        weight_decay=1e-4,
        augment="cifar",
        preprocessing="torch",
        warmup_epochs=1,
        warmup_lr=0.01,
        schedule={"type": "step", "fractions": [0.5, 0.75], "factor": 0.1},
        source="He et al. 2016 §5 (arXiv:1603.05027)",
        notes="as the CIFAR ResNets: lr 0.1 (0.01 warm-up), divided by 10 at 32k and 48k of 64k iterations.",
    ),
    "wrn_cifar": _r(
        lr=0.1,
        batch_size=128,
        epochs=200,
        nesterov=True,
        weight_decay=5e-4,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "step", "boundaries": [60, 120, 160], "factor": 0.2},
        source="Zagoruyko & Komodakis 2016 §3 (arXiv:1605.07146)",
        notes="Nesterov momentum 0.9, lr 0.1 multiplied by 0.2 at epochs 60, 120, 160 of 200, weight decay 5e-4; "
        "dropout 0.3 for the +dropout rows (recipe override {'dropout': 0.3}).",
    ),
    "resnext_cifar": _r(
        lr=0.1,
        batch_size=128,
        epochs=300,
        weight_decay=5e-4,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "step", "boundaries": [150, 225], "factor": 0.1},
        source="Xie et al. 2016 §5.2 (arXiv:1611.05431)",
        notes="batch 128 on 8 GPUs, lr 0.1 divided by 10 at epochs 150 and 225 of 300, weight decay 5e-4.",
    ),
    "stochastic_depth_cifar": _r(
        lr=0.1,
        batch_size=128,
        epochs=500,
        nesterov=True,
        weight_decay=1e-4,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "step", "boundaries": [250, 375], "factor": 0.1},
        source="Huang et al. 2016 §4 (arXiv:1603.09382)",
        notes="500 epochs, lr 0.1 divided by 10 at epochs 250 and 375, Nesterov momentum 0.9 (no dampening).",
    ),
    "densenet_cifar": _r(
        lr=0.1,
        batch_size=64,
        epochs=300,
        nesterov=True,
        weight_decay=1e-4,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "step", "fractions": [0.5, 0.75], "factor": 0.1},
        source="Huang et al. 2017 §4.2 (arXiv:1608.06993)",
        notes="batch 64, 300 epochs, lr 0.1 divided by 10 at 50% and 75% of training, Nesterov momentum 0.9; "
        "dropout 0.2 only without augmentation (override {'dropout': 0.2, 'augment': 'none'}).",
    ),
    "densenet_imagenet": _r(
        lr=0.1,
        batch_size=256,
        epochs=90,
        nesterov=True,
        weight_decay=1e-4,
        augment="resnet",
        schedule={"type": "step", "boundaries": [30, 60], "factor": 0.1},
        source="Huang et al. 2017 §4.2",
        notes="batch 256, 90 epochs, lr 0.1 divided by 10 at epochs 30 and 60, Nesterov momentum 0.9.",
    ),
    "fractalnet_cifar": _r(
        lr=0.02,
        batch_size=100,
        epochs=400,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "step", "fractions": [0.5, 0.75, 0.875, 0.9375], "factor": 0.1},
        source="Larsson et al. 2016 §4.1 (arXiv:1605.07648)",
        notes="momentum 0.9, batch 100, 400 epochs, lr 0.02 divided by 10 each time the remaining epochs halve; "
        "drop-path and dropout live in the model (its builder options).",
    ),
    "nin_cifar": _r(
        lr=0.1,
        batch_size=128,
        epochs=120,
        weight_decay=1e-4,
        dropout=0.5,
        augment="cifar",
        preprocessing="torch",
        schedule={"type": "plateau", "monitor": "val_accuracy", "factor": 0.1, "patience": 10, "max_reductions": 2},
        source="Lin et al. 2013 §4.1 (arXiv:1312.4400)",
        notes="the protocol of Krizhevsky et al.: lr divided by 10 when accuracy stops improving, twice; batch "
        "128; initial lr and weight decay are not in the paper (values of the released Caffe models' "
        "usual solver).",
    ),
    "nin_imagenet": _r(
        lr=0.01,
        batch_size=128,
        epochs=90,
        weight_decay=5e-4,
        dropout=0.5,
        augment="alexnet",
        schedule={"type": "plateau", "monitor": "val_accuracy", "factor": 0.1, "patience": 5, "max_reductions": 3},
        source="Lin et al. 2013 §4 (AlexNet's protocol)",
        notes="AlexNet's protocol.",
    ),
    "squeezenet": _r(
        lr=0.04,
        batch_size=512,
        epochs=68,
        weight_decay=2e-4,
        dropout=0.5,
        augment="alexnet",
        schedule={"type": "poly", "power": 1.0},
        source="Iandola et al. 2016 (arXiv:1602.07360); released solver.prototxt of SqueezeNet v1.0",
        notes="base lr 0.04, linear ('poly', power 1) decay to 0 over 170k iterations at batch 512 (≈68 epochs), "
        "momentum 0.9, weight decay 2e-4.",
    ),
    "generic": _r(
        lr=0.01,
        batch_size=32,
        epochs=10,
        weight_decay=1e-4,
        augment="none",
        schedule={"type": "cosine"},
        source="kerasarch default",
        notes="for models without a paper recipe.",
    ),
}


def recipe_name_for(spec: ModelSpec | None) -> str:
    """The name of the default recipe of a :class:`~kerasarch.ModelSpec` (its ``recipe`` field; ``"generic"`` for
    ``None``)."""
    return "generic" if spec is None else spec.recipe


def get_recipe(
    spec: ModelSpec | None = None,
    recipe: str | os.PathLike | dict[str, Any] | None = "paper",
    **overrides: Any,
) -> dict[str, Any]:
    """Resolves a recipe.

    Args:
        spec: the model's :class:`~kerasarch.ModelSpec` (or ``None`` for a model outside the registry).
        recipe: ``"paper"`` (the spec's family recipe), a name in :data:`RECIPES`, a path to a JSON file, or a
            dict of overrides of the paper recipe (a ``"base"`` key picks another recipe to start from).
        **overrides: keys to replace last (``None`` values are ignored); ``batch_size`` without ``lr`` scales the
            learning rate linearly when ``lr_scaling`` is ``"linear"``.

    Returns:
        A new dict with every key of the recipe plus ``"name"``, ``"base_lr"`` and ``"base_batch_size"``.
    """
    changes = {}
    if isinstance(recipe, (str, os.PathLike)) and str(recipe).endswith(".json"):
        with open(recipe) as f:
            changes = json.load(f)
        base_name = changes.pop("base", None) or changes.get("name") or recipe_name_for(spec)
    elif isinstance(recipe, dict):
        changes = dict(recipe)
        base_name = changes.pop("base", None) or recipe_name_for(spec)
    elif recipe in (None, "paper"):
        base_name = recipe_name_for(spec)
    else:
        base_name = recipe
    if base_name not in RECIPES:
        raise ValueError(
            f"Unknown recipe {base_name!r}; choose 'paper', one of {sorted(RECIPES)}, a JSON file or a "
            f"dict of overrides."
        )
    out = copy.deepcopy(RECIPES[base_name])
    changes.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(changes) - set(out) - {"name", "base_lr", "base_batch_size"})
    if unknown:
        raise ValueError(f"Unknown recipe keys {unknown}; a recipe has {sorted(out)}.")
    base_lr, base_batch = out["lr"], out["batch_size"]
    out.update(copy.deepcopy(changes))
    out["name"] = base_name
    if "lr" not in changes and out["batch_size"] != base_batch and out.get("lr_scaling") == "linear":
        out["lr"] = base_lr * out["batch_size"] / base_batch
    out["base_lr"], out["base_batch_size"] = base_lr, base_batch
    _check(out)
    return out


def _check(r):
    from kerasarch.data.transforms import AUGMENTATIONS, PREPROCESSING_MODES

    if r["optimizer"] not in ("sgd", "adam", "adamw", "rmsprop"):
        raise ValueError(f"Recipe optimizer must be 'sgd', 'adam', 'adamw' or 'rmsprop'. Received: {r['optimizer']!r}")
    if r["augment"] not in AUGMENTATIONS:
        raise ValueError(f"Recipe augment must be one of {AUGMENTATIONS}. Received: {r['augment']!r}")
    if r["preprocessing"] is not None and r["preprocessing"] not in PREPROCESSING_MODES:
        raise ValueError(
            f"Recipe preprocessing must be None or one of {PREPROCESSING_MODES}. Received: {r['preprocessing']!r}"
        )
    if not (isinstance(r["batch_size"], int) and r["batch_size"] >= 1):
        raise ValueError(f"Recipe batch_size must be a positive integer. Received: {r['batch_size']!r}")
    if not (isinstance(r["epochs"], int) and r["epochs"] >= 1):
        raise ValueError(f"Recipe epochs must be a positive integer. Received: {r['epochs']!r}")
    kinds = ("constant", "step", "piecewise", "exponential", "poly", "cosine", "plateau")
    if r["schedule"].get("type") not in kinds:
        raise ValueError(f"Recipe schedule type must be one of {kinds}. Received: {r['schedule']!r}")


class PlateauState:
    """The state of a ``"plateau"`` schedule: the multiplier, the best value, epochs without improvement."""

    def __init__(self, schedule: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> None:
        self.schedule = schedule
        state = state or {}
        self.multiplier = float(state.get("multiplier", 1.0))
        self.best = state.get("best")
        self.wait = int(state.get("wait", 0))
        self.reductions = int(state.get("reductions", 0))

    def update(self, logs: Mapping[str, float]) -> bool:
        """Called at the end of an epoch with its logs; returns True when the learning rate was reduced."""
        s = self.schedule
        if s.get("type") != "plateau":
            return False
        monitor = s.get("monitor", "val_accuracy")
        value = logs.get(monitor, logs.get(monitor.replace("val_", "")))
        if value is None:
            return False
        higher = s.get("mode", "max" if "acc" in monitor else "min") == "max"
        delta = float(s.get("min_delta", 1e-4))
        if self.best is None or (value > self.best + delta if higher else value < self.best - delta):
            self.best, self.wait = float(value), 0
            return False
        self.wait += 1
        if self.wait >= int(s.get("patience", 5)) and self.reductions < int(s.get("max_reductions", 1 << 30)):
            self.multiplier *= float(s.get("factor", 0.1))
            self.reductions += 1
            self.wait = 0
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier, "best": self.best, "wait": self.wait, "reductions": self.reductions}


def lr_at(
    recipe: Mapping[str, Any],
    epoch: int,
    step: int = 0,
    steps_per_epoch: int | None = None,
    plateau_multiplier: float = 1.0,
) -> float:
    """The learning rate at ``step`` of (0-based) ``epoch`` under ``recipe``'s schedule."""
    lr = float(recipe["lr"])
    epochs = int(recipe["epochs"])
    if recipe.get("warmup_epochs") and epoch < recipe["warmup_epochs"]:
        if recipe.get("warmup_lr") is not None:
            return float(recipe["warmup_lr"])
        frac = (epoch + (step / steps_per_epoch if steps_per_epoch else 0.0) + 1e-9) / recipe["warmup_epochs"]
        return lr * min(1.0, frac)
    s = recipe["schedule"]
    kind = s["type"]
    t = epoch + (step / steps_per_epoch if steps_per_epoch else 0.0)
    if kind == "constant":
        return lr
    if kind == "plateau":
        return lr * plateau_multiplier
    if kind in ("step", "piecewise"):
        bounds = s.get("boundaries")
        if bounds is None:
            bounds = [round(f * epochs) for f in s.get("fractions", [])]
        passed = sum(epoch >= b for b in bounds)
        if kind == "step":
            return lr * float(s.get("factor", 0.1)) ** passed
        return lr * float(s["multipliers"][passed])
    if kind == "exponential":
        return lr * float(s["factor"]) ** (epoch // int(s.get("every", 1)))
    if kind == "poly":
        return lr * max(0.0, 1.0 - t / epochs) ** float(s.get("power", 1.0)) + float(s.get("end", 0.0))
    if kind == "cosine":
        import math

        return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / epochs)))
    raise ValueError(f"Unknown schedule {s!r}")
