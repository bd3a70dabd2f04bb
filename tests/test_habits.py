"""Habits of the source tree, checked by reading it: no module reaches into another module's private names, and
the Keras internals kerasarch depends on are read in ``kerasarch/keras_compat.py`` only."""

import ast
import os
import re

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
