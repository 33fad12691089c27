"""What every task shares: no result caching (stages cache by content themselves) and backoff."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

#: Defaults for tasks that talk to the network or a server: three retries with jittered backoff.
NETWORK_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5}
NO_RESULT_CACHE = {"cache_policy": NO_CACHE}
