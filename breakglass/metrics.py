"""Prometheus metrics: request counts kept per process, the rest read from the rows.

Counts of HTTP requests live in each process (shared between a node's gunicorn
workers through PROMETHEUS_MULTIPROC_DIR); every other figure is read from the
database at scrape time, so any node answers the same truth.
"""

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from . import selectors

HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

http_requests = Counter(
    "breakglass_http_requests",
    "HTTP requests answered, by method and status code.",
    ["method", "status"],
)


class RequestMetricsMiddleware:
    """Count every answer by method and status code."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        # Any other method a client invents would grow the label set without end.
        method = request.method if request.method in HTTP_METHODS else "other"
        http_requests.labels(method=method, status=str(response.status_code)).inc()
        return response


class FiguresCollector:
    """Expose the figures of `selectors.operations_figures` as metric families."""

    def collect(self):
        figures = selectors.operations_figures()

        requests = GaugeMetricFamily(
            "breakglass_requests",
            "Access requests by status.",
            labels=["status"],
        )
        for status, count in figures["requests_by_status"].items():
            requests.add_metric([status], count)
        yield requests

        active = GaugeMetricFamily(
            "breakglass_active_grants",
            "Grants whose credential exists on the target now, by target.",
            labels=["target"],
        )
        for target, count in figures["active_grants_by_target"].items():
            active.add_metric([target], count)
        yield active

        yield from _event_counters(figures["events"])

        failing = GaugeMetricFamily(
            "breakglass_revocations_failing",
            "Grants due to end whose revocation failed and is being retried.",
            value=figures["revocations_failing"],
        )
        yield failing
        yield GaugeMetricFamily(
            "breakglass_revocations_overdue",
            "Grants due to end whose revocation was not tried yet.",
            value=figures["revocations_overdue"],
        )

        undelivered = GaugeMetricFamily(
            "breakglass_alerts_undelivered",
            "Alerts not delivered yet, by channel.",
            labels=["channel"],
        )
        stuck = GaugeMetricFamily(
            "breakglass_alerts_stuck",
            "Alerts still undelivered a minute after their event, by channel.",
            labels=["channel"],
        )
        for channel in ("webhook", "email"):
            counts = figures["undelivered_alerts"].get(channel, {})
            undelivered.add_metric([channel], counts.get("count", 0))
            stuck.add_metric([channel], counts.get("stuck", 0))
        yield undelivered
        yield stuck

        yield GaugeMetricFamily(
            "breakglass_audit_head_seq",
            "Sequence number of the last event of the audit trail.",
            value=figures["audit_head_seq"],
        )
        if figures["heartbeat_age_seconds"] is not None:
            yield GaugeMetricFamily(
                "breakglass_worker_heartbeat_age_seconds",
                "Seconds since a worker last ran the heartbeat task.",
                value=figures["heartbeat_age_seconds"],
            )

        yield from _time_histograms(figures["times"])


_TIME_HELP = {
    "approval": "Seconds from a request to the approval that completed its quorum.",
    "issuance": "Seconds from the quorum to the credential existing on the target.",
    "revocation_lag": "Seconds from when a grant was due to end to its revocation.",
}
_TIME_NAMES = {
    "approval": "breakglass_time_to_approval_seconds",
    "issuance": "breakglass_time_to_issuance_seconds",
    "revocation_lag": "breakglass_revocation_lag_seconds",
}


def _time_histograms(times):
    for kind, figures in times.items():
        buckets = [(_bound(bound), count) for bound, count in figures["buckets"]]
        buckets.append(("+Inf", figures["count"]))
        yield HistogramMetricFamily(
            _TIME_NAMES[kind],
            _TIME_HELP[kind],
            buckets=buckets,
            sum_value=figures["sum"],
        )


def _bound(bound):
    return str(float(bound))


def _event_counters(events):
    approvals = CounterMetricFamily(
        "breakglass_approvals",
        "Approvers' decisions confirmed with a one-time code, by decision.",
        labels=["decision"],
    )
    uses = CounterMetricFamily(
        "breakglass_credential_uses",
        "Sessions detected on targets with a grant's credential, by target.",
        labels=["target"],
    )
    failures = CounterMetricFamily(
        "breakglass_revocation_failures",
        "Failed revocation attempts, by target.",
        labels=["target"],
    )
    decisions = {"approved": 0, "denied": 0}
    for action, target, count in events:
        if action.startswith("approval."):
            decisions[action.removeprefix("approval.")] += count
        elif action == "credential.used":
            uses.add_metric([target], count)
        elif action == "grant.revocation_failed":
            failures.add_metric([target], count)
    for decision, count in decisions.items():
        approvals.add_metric([decision], count)
    yield approvals
    yield uses
    yield failures


def render():
    """Return the exposition text of every metric, for the /metrics view."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    figures = CollectorRegistry(auto_describe=False)
    figures.register(FiguresCollector())
    return generate_latest(registry) + generate_latest(figures)
