"""`python -m adaptflow ...` is the `adaptflow` command (`adaptflow.app.cli`): an entry point, part of the app layer."""

from adaptflow.app.cli import main

main()
