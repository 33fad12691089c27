"""Entry points of the Prefect flows, for prefect.yaml (`flows/NAME.py:FLOW`) and `prefect deploy`.

The flows live in `adaptflow.orchestration.flows`; each file here only imports one from there. This
folder is not part of the wheel: import the flows from `adaptflow.orchestration.flows`.
"""
