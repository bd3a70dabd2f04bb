"""Habits of the source tree, checked by reading it: no module reaches into another module's private names, the
Keras internals kerasarch depends on are read in ``kerasarch/keras_compat.py`` only, and the public API carries type
hints that resolve."""

import ast
import importlib
import inspect
import os
import re
import typing

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kerasarch", "finetune", "bench")


def _modules():
    """``(dotted module name, path)`` of every Python file under the checked packages."""
    found = []
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found.append((".".join(parts), path))
    return found


MODULES = _modules()
OUR_MODULES = {name for name, _ in MODULES}


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_of(module, path):
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _absolute(module, path, node):
    """The absolute module name of an ``ImportFrom`` (resolving relative imports)."""
    if not node.level:
        return node.module or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _private_module_outside_its_package(target, importer):
    """A private module (``pkg._mod``) may be imported from inside ``pkg`` only."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            owner = ".".join(parts[:i])
            if not (importer == owner or importer.startswith(owner + ".")):
                return True
    return False


def private_uses(module, path, source=None):
    """The private names ``module`` takes from other modules: ``from m import _x``, a private module imported
    from outside its package, and ``mod._x`` on a module of this project bound by an import."""
    tree = ast.parse(source if source is not None else open(path, encoding="utf-8").read(), filename=path)
    found, module_names = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, path, node)
            if target == "__future__":
                continue
            if _private_module_outside_its_package(target, module):
                found.append(f"{node.lineno}: from {target} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {target} import {alias.name}")
                elif f"{target}.{alias.name}" in OUR_MODULES:
                    module_names[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _private_module_outside_its_package(alias.name, module):
                    found.append(f"{node.lineno}: import {alias.name}")
                if alias.name.split(".")[0] in PACKAGES:
                    if alias.asname:
                        module_names[alias.asname] = alias.name
                    else:
                        module_names[alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in module_names:
                dotted = ".".join([module_names[value.id], *chain])
                if dotted in OUR_MODULES and dotted != module:
                    found.append(f"{node.lineno}: {dotted}.{node.attr}")
    return found


def test_the_checker_sees_each_kind_of_private_use():
    """The checker itself, on a made-up module: each way of reaching a private name is reported."""
    source = "\n".join(
        [
            "from kerasarch.training.loop import _build_model, train",
            "from kerasarch import _discover",
            "import kerasarch.training.loop as loop",
            "from kerasarch.training import recipes",
            "from . import counting",
            "x = loop._inference_model",
            "y = recipes._RULES, recipes.RECIPES, counting._x",
            "z = some_object._private  # not a module: allowed",
        ]
    )
    found = private_uses("finetune.fake", os.path.join(ROOT, "finetune", "fake.py"), source)
    assert [f.split(": ", 1)[1] for f in found] == [
        "from kerasarch.training.loop import _build_model",
        "from kerasarch import _discover",
        "kerasarch.training.loop._inference_model",
        "kerasarch.training.recipes._RULES",
    ], found
    inside = private_uses(
        "kerasarch.analysis.fake",
        os.path.join(ROOT, "kerasarch", "analysis", "fake.py"),
        "from . import counting\nfrom kerasarch._discover import x\nc = counting._x\n",
    )
    assert inside == ["3: kerasarch.analysis.counting._x"]


def test_no_module_imports_another_modules_private_names():
    # kerasarch.keras_compat is where the frameworks' internals are read (see the next test).
    offenders = {
        name: uses for name, path in MODULES if (uses := private_uses(name, path)) and name != "kerasarch.keras_compat"
    }
    assert not offenders, (
        "Private names used across modules (make them public and documented, or keep them "
        f"inside their module): {offenders}"
    )


KERAS_INTERNALS = re.compile(
    r"_keras_history|_inbound_nodes|_outbound_nodes|_nodes_by_depth|_num_workers|"
    r"_seen_so_far|keras\.src\b|keras_tuner\.src\b|\._brackets\b|tensorflow\.python\b"
)


def test_keras_internals_are_read_in_keras_compat_only():
    found = {}
    for name, path in MODULES:
        if name == "kerasarch.keras_compat":
            continue
        code = [
            (i, line.strip())
            for i, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1)
            if KERAS_INTERNALS.search(line.split("#")[0])
        ]
        if code:
            found[name] = code
    assert not found, f"Keras / keras-tuner / TensorFlow internals read outside kerasarch.keras_compat: {found}"


# The public API whose signatures carry type hints: each module's ``__all__``, or the names listed.
TYPED_API = {
    "kerasarch": None,
    "kerasarch.features": None,
    "kerasarch.data": None,
    "kerasarch.weights": None,
    "kerasarch.card": None,
    "kerasarch.export": None,
    "kerasarch.training": None,
    "kerasarch.layers.pointwise": None,
    "kerasarch.layers.grouped": None,
    "kerasarch.layers.normalization": None,
    "kerasarch.training.optimizers": None,
}


def _annotation_namespace():
    """Names the annotations may use that their modules import only for type checkers (``TYPE_CHECKING``)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import kerasarch.card

    return {"keras": keras, "np": np, "tf": tf, "os": os, **vars(typing), **vars(kerasarch.card)}


def missing_annotations(function, label):
    """``label(param)`` for each parameter of ``function`` without a type hint, ``label -> ?`` for a missing return
    hint, and ``label: <error>`` when its hints do not resolve (a misspelt or unimported name)."""
    signature = inspect.signature(function)
    found = [
        f"{label}({p})" for p in signature.parameters if p not in ("self", "cls") and p not in function.__annotations__
    ]
    if "return" not in function.__annotations__:
        found.append(f"{label} -> ?")
    try:
        typing.get_type_hints(function, localns=_annotation_namespace())
    except Exception as e:  # noqa: BLE001  (any failure to resolve is the finding)
        found.append(f"{label}: {type(e).__name__}: {e}")
    return found


def _public_functions(obj, label):
    """``(label, function)`` of a function, or of a class's own public methods, properties and ``__init__``."""
    if inspect.isfunction(obj):
        return [(label, obj)]
    if not inspect.isclass(obj):
        return []
    found = []
    for name, member in vars(obj).items():
        if name.startswith("_") and name != "__init__":
            continue
        function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if inspect.isfunction(function):
            found.append((f"{label}.{name}", function))
    return found


def test_the_annotation_checker_reports_each_gap():
    def partly(self, a, b: int, *args, c: str = "", **kwargs) -> int: ...

    def unresolved(a: "NoSuchType") -> None: ...  # noqa: F821

    class Thing:
        def __init__(self, x: int):
            pass

        @property
        def size(self):
            return 1

    assert missing_annotations(partly, "partly") == ["partly(a)", "partly(args)", "partly(kwargs)"]
    assert missing_annotations(unresolved, "u")[0].startswith("u: NameError")
    checked = dict(_public_functions(Thing, "Thing"))
    assert sorted(checked) == ["Thing.__init__", "Thing.size"]
    assert missing_annotations(checked["Thing.__init__"], "i") == ["i -> ?"]
    assert missing_annotations(checked["Thing.size"], "s") == ["s -> ?"]


def test_the_public_api_has_type_hints():
    checked, missing = [], []
    for module_name, names in TYPED_API.items():
        module = importlib.import_module(module_name)
        for name in names or module.__all__:
            for label, function in _public_functions(getattr(module, name), f"{module_name}.{name}"):
                checked.append(label)
                missing.extend(missing_annotations(function, label))
    assert "kerasarch.build_model" in checked and "kerasarch.training.train" in checked and len(checked) > 60, checked
    assert not missing, f"Public functions without (resolvable) type hints: {missing}"


def test_an_unknown_model_name_is_one_kerasarch_error_naming_it_and_its_close_matches(capsys):
    import kerasarch
    from kerasarch.cli import main
    from kerasarch.errors import KerasarchError

    with pytest.raises(KerasarchError) as caught:
        kerasarch.get_spec("resnet5")
    assert isinstance(caught.value, ValueError)  # ``except ValueError`` callers keep working
    message = str(caught.value)
    assert "'resnet5'" in message and "Did you mean:" in message, message
    assert {"resnet50", "resnet56"} <= set(message.split("Did you mean:")[1].split("?")[0].replace(",", " ").split())
    assert main(["summary", "nosuchnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kerasarch summary: error: Unknown model name 'nosuchnet'"), err
