"""Imports every module of a package, so that families, layers and commands register themselves."""

import importlib
import pkgutil


def import_submodules(package_name):
    package = importlib.import_module(package_name)
    return [
        importlib.import_module(f"{package_name}.{info.name}")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
        if not info.name.startswith("_")
    ]
