"""Prometheus metrics of one service instance: webhook outcomes, jobs by state, step durations."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _JobStates(Collector):
    """Reads the queue's counts at scrape time, so the gauge is never out of date."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("cupaas_jobs", "Jobs in the queue by state.", labels=["state"])
        for state, count in sorted(self._counts().items()):
            family.add_metric([state], count)
        yield family


class Metrics:
    """A registry per app instance (not the process-global one), so tests and reloads never collide."""

    def __init__(self, job_counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter("cupaas_webhook_requests", "Webhook requests by forge and outcome.",
                                ["forge", "outcome"], registry=self.registry)
        self.jobs_finished = Counter("cupaas_jobs_finished", "Jobs finished by kind and final state.",
                                     ["kind", "state"], registry=self.registry)
        self.step_seconds = Histogram("cupaas_deploy_step_seconds", "Duration of each deploy step.", ["step"],
                                      buckets=STEP_BUCKETS, registry=self.registry)
        self.registry.register(_JobStates(job_counts))

    def observe_step(self, step: str, seconds: float) -> None:
        self.step_seconds.labels(step=step).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
