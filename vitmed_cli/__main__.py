"""``python -m vitmed_cli`` (and ``torchrun -m vitmed_cli``) runs the CLI."""

from vitmed_cli.cli import main

main()
