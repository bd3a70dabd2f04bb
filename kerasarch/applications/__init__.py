"""One Functional-API builder file per family; importing this package registers every family."""

from kerasarch._discover import import_submodules

import_submodules(__name__)
