"""Sub-commands of the ``kerasarch`` command line, one module each (see ``kerasarch.cli``)."""
