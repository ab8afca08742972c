"""`python -m runyard.cli` is the `runyard` command."""

from .main import entry

entry()
