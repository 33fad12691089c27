"""The app layer, above the core and the Prefect layer: the `adaptflow` command (`cli`, with one module per
command group) and the local production stack's supervisor (`stack`). It may import anything; nothing in
`adaptflow` imports it but the entry point `adaptflow/__main__.py`."""
