"""``python -m netadapt`` runs the CLI."""

from .cli import main

main()
