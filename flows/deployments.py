"""Entry point of the deployments `adaptflow serve` runs; they are `adaptflow.orchestration.flows.deployments`."""

from adaptflow.orchestration.flows.deployments import benchmark_deployment, deployments, serve, sweep_deployment

__all__ = ["benchmark_deployment", "deployments", "serve", "sweep_deployment"]
