"""``python -m spindle`` runs the command line."""

from .cli import main

main()
