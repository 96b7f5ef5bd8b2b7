"""`python -m prunewise` runs the CLI."""
from .cli import entry

entry()
