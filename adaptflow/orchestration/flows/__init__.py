"""Prefect flows: they only sequence tasks. Each takes one RunConfig (rendered as a form in the UI)."""
