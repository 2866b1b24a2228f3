"""What load balancers, orchestrators and Prometheus ask each node.

/healthz: the process answers. /readyz: the database, the broker and a recent
worker heartbeat answer too; 503 naming the failed check otherwise. /metrics:
the Prometheus metrics, behind a bearer token when BREAKGLASS_METRICS_TOKEN is set.
"""

import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from . import health, metrics


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request):
    ready, checks = health.readiness()
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )


@never_cache
@require_GET
def metrics_view(request):
    if not _may_scrape(request):
        response = JsonResponse(
            {
                "code": "not_authenticated",
                "detail": "Send the metrics token as `Authorization: Bearer ...`.",
            },
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)


def _may_scrape(request):
    token = settings.BREAKGLASS_METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
