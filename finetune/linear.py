"""``python -m finetune linear``: a linear classifier (softmax regression) on extracted features, and its
accuracy on held-out images.

The held-out images are a second features directory (``--test``), which must come from the same network,
weights, tap and preprocessing, or a stratified fraction of the first (``--test-fraction``). Features are
standardised with the training statistics; spatial maps are average-pooled (``--pool``).
"""

from __future__ import annotations

import os

import numpy as np

from finetune.errors import FinetuneError
from finetune.sources import stratified_split
from finetune.store import FeatureSet, check_same_source, load_features, save_npz, write_json

__all__ = ["LinearProbe", "fit_linear", "folded_head", "pool_features", "register", "run", "solve_linear"]


def pool_features(x, pool="auto"):
    """(N, ...) features -> (N, D): ``avg`` averages the spatial axes of (N, H, W, C) maps, ``flatten`` keeps
    everything, ``auto`` averages maps larger than 1x1."""
    x = np.asarray(x, dtype="float32")
    if x.ndim == 2:
        return x
    if pool == "auto":
        pool = "avg" if x.ndim == 4 and x.shape[1] * x.shape[2] > 1 else "flatten"
    if pool == "avg":
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)
    if pool == "flatten":
        return x.reshape(x.shape[0], -1)
    raise FinetuneError(f"--pool must be auto, avg or flatten. Received: {pool!r}")


class LinearProbe:
    """A fitted softmax-regression classifier: ``scores = ((x - mean) / std) @ kernel + bias``."""

    def __init__(self, kernel, bias, mean, std, class_names, source):
        self.kernel, self.bias, self.mean, self.std = kernel, bias, mean, std
        self.class_names, self.source = list(class_names), dict(source)

    def predict(self, x):
        z = (x - self.mean) / self.std
        return np.argmax(z @ self.kernel + self.bias, axis=1)

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        save_npz(
            os.path.join(directory, "classifier.npz"), kernel=self.kernel, bias=self.bias, mean=self.mean, std=self.std
        )
        write_json(os.path.join(directory, "classifier.json"), {"class_names": self.class_names, **self.source})


def fit_linear(
    train,
    test=None,
    *,
    test_fraction=0.2,
    backend="sklearn",
    C=1.0,
    pool="auto",
    seed=0,
    epochs=300,
    model=None,
    tap=None,
):
    """Fits a linear classifier on the features of ``train`` and measures its accuracy on ``test``.

    Args:
        train: a features directory or :class:`~finetune.store.FeatureSet`.
        test: held-out features (same model/tap/weights/preprocessing), or ``None``: hold out
            ``test_fraction`` of each class of ``train``.
        backend: ``"sklearn"`` (LogisticRegression, L-BFGS) or ``"keras"`` (a Dense softmax layer, Adam).
        C: inverse L2 regularisation strength (sklearn's convention, used by both backends).
        pool: how spatial maps become vectors (``auto``, ``avg``, ``flatten``).
        seed: the split and the Keras initialisation.
        epochs: full-batch Adam steps of the Keras backend.
        model, tap: when given, the features must come from this model / tap.

    Returns:
        ``(probe, result)``: the :class:`LinearProbe` and a dict with ``accuracy``, ``train_accuracy`` and the
        counts.
    """
    train = train if isinstance(train, FeatureSet) else load_features(train, model=model, tap=tap)
    wanted = (model or train.metadata["model"], tap or train.metadata["tap"])
    if (train.metadata["model"], train.metadata["tap"]) != wanted:
        raise FinetuneError(f"{train.directory!r} holds features of {train.source}, not of {wanted[0]}/{wanted[1]}.")
    x = pool_features(train.features, pool)
    y = train.labels
    if test is not None:
        test = test if isinstance(test, FeatureSet) else load_features(test)
        check_same_source(train, test)
        x_train, y_train, x_test, y_test = x, y, pool_features(test.features, pool), test.labels
    else:
        tr, te = stratified_split(y, test_fraction, seed)
        x_train, y_train, x_test, y_test = x[tr], y[tr], x[te], y[te]
    if len(np.unique(y_train)) < 2:
        raise FinetuneError("A classifier needs training images of at least 2 classes.")
    classes = len(train.class_names)
    kernel, bias, mean, std = solve_linear(x_train, y_train, classes, C=C, backend=backend, seed=seed, epochs=epochs)
    source = {k: train.metadata.get(k) for k in ("model", "tap", "weights_sha256", "preprocessing", "input_shape")}
    probe = LinearProbe(kernel, bias, mean, std, train.class_names, source)
    result = {
        "accuracy": float(np.mean(probe.predict(x_test) == y_test)) if len(y_test) else float("nan"),
        "train_accuracy": float(np.mean(probe.predict(x_train) == y_train)),
        "num_train": len(y_train),
        "num_test": len(y_test),
        "backend": backend,
        "C": C,
        "feature_dim": int(x_train.shape[1]),
        **source,
    }
    return probe, result


def solve_linear(x, y, classes, *, C=1.0, backend="sklearn", seed=0, epochs=300):
    """Multinomial logistic regression with an L2 penalty on standardised features, fitted to convergence.

    The objective (scikit-learn's): ``sum_i CE(softmax(z_i W + b), y_i) + ||W||^2 / (2 C)`` with
    ``z = (x - mean) / std`` (training statistics); convex, so the solution is unique.

    Args:
        x: (N, D) features; y: (N,) integer labels in ``[0, classes)``.
        classes: the number of classes (a class without training images gets a bias of -1e9: never predicted).
        C: inverse L2 strength. backend: ``"sklearn"`` (L-BFGS) or ``"keras"`` (a Dense softmax layer, Adam).

    Returns:
        ``(kernel (D, classes), bias (classes,), mean (D,), std (D,))``, float32.
    """
    x = np.asarray(x, "float32")
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise FinetuneError(
            f"A classifier needs training images of at least 2 classes. Received labels: {sorted(set(y.tolist()))}"
        )
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    z = (x - mean) / std
    if backend == "sklearn":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=5000, tol=1e-6)
        clf.fit(z, y)
        kernel = np.zeros((z.shape[1], classes), "float32")
        bias = np.full((classes,), -1e9, "float32")  # classes absent from the training set are never predicted
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row
            coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        kernel[:, clf.classes_] = coef.T
        bias[clf.classes_] = intercept
    elif backend == "keras":
        kernel, bias = _keras_softmax_regression(z, y, classes, C, seed, epochs)
    else:
        raise FinetuneError(f"--backend must be sklearn or keras. Received: {backend!r}")
    return kernel.astype("float32"), bias.astype("float32"), mean.astype("float32"), std.astype("float32")


def folded_head(kernel, bias, mean, std):
    """The Dense layer computing the same scores on raw features: ``x @ (kernel / std) + (bias - (mean / std)
    @ kernel)``. Returns ``(kernel, bias)``."""
    scaled = kernel / std[:, None]
    return scaled.astype("float32"), (bias - (mean / std) @ kernel).astype("float32")


def _keras_softmax_regression(z, y, classes, C, seed, epochs):
    """Multinomial logistic regression as one Dense softmax layer, with sklearn's objective:
    mean cross-entropy + ||W||^2 / (2 C N)."""
    import keras

    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(1.0 / (2.0 * C * len(y)))
    inputs = keras.Input((z.shape[1],))
    outputs = keras.layers.Dense(classes, activation="softmax", kernel_regularizer=reg, name="linear")(inputs)
    clf = keras.Model(inputs, outputs)
    clf.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    clf.fit(z, y, batch_size=len(y), epochs=epochs, verbose=0, shuffle=False)
    kernel, bias = clf.get_layer("linear").get_weights()
    return kernel, bias


def register(sub):
    p = sub.add_parser(
        "linear",
        help="fit a linear classifier on extracted features; report held-out accuracy",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("features", help="features directory written by `extract`")
    p.add_argument("--test", default=None, help="held-out features directory (same model, weights and tap)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held out of FEATURES when no --test")
    p.add_argument("--backend", choices=("sklearn", "keras"), default="sklearn")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation strength")
    p.add_argument("--pool", choices=("auto", "avg", "flatten"), default="auto")
    p.add_argument("--model", default=None, help="refuse features that are not from this model")
    p.add_argument("--tap", default=None, help="refuse features that are not from this tap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write classifier.npz, classifier.json and result.json here")
    p.set_defaults(func=run)


def run(args):
    probe, result = fit_linear(
        args.features,
        args.test,
        test_fraction=args.test_fraction,
        backend=args.backend,
        C=args.C,
        pool=args.pool,
        seed=args.seed,
        model=args.model,
        tap=args.tap,
    )
    if args.out:
        probe.save(args.out)
        write_json(os.path.join(args.out, "result.json"), result)
    print(
        f"linear probe on {result['model']}/{result['tap']} ({result['feature_dim']} features, {args.backend}): "
        f"held-out accuracy {100 * result['accuracy']:.2f}% on {result['num_test']} images "
        f"(train {100 * result['train_accuracy']:.2f}% on {result['num_train']})"
    )
    return 0
