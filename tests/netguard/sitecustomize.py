"""Loaded by every Python process the tests start (PYTHONPATH): the same network guard."""

import os

if os.environ.get("ADAPTFLOW_TEST_NETWORK_LOG"):
    import netguard

    netguard.install()
