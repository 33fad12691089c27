"""`python -m adaptflow ...` is the `adaptflow` command."""

from adaptflow.cli import main

main()
