"""Training with the papers' recipes: tf.data input, mixed precision, tf.distribute (multi-worker included) and
run folders that survive a kill.

    from kerasarch import data, training
    train_ds, test_ds = data.load("mnist5k")
    result = training.train("lenet5", train_ds, test_ds, out_dir="runs/lenet5")
    result.evaluate(test_ds)["accuracy"]
"""

from kerasarch.training.distribute import is_chief, make_strategy
from kerasarch.training.loop import TrainResult, evaluate, train
from kerasarch.training.optimizers import SGD
from kerasarch.training.precision import PRECISIONS, cpu_supports_bfloat16, resolve_precision
from kerasarch.training.recipes import RECIPES, get_recipe, lr_at, recipe_name_for

__all__ = [
    "train",
    "evaluate",
    "TrainResult",
    "SGD",
    "get_recipe",
    "recipe_name_for",
    "lr_at",
    "RECIPES",
    "resolve_precision",
    "cpu_supports_bfloat16",
    "PRECISIONS",
    "make_strategy",
    "is_chief",
]
