"""Every address of the project, with a request that exercises it, for the matrix tests.

`ROUTES` names each URL pattern of the resolver with the calls made on it. A call's
path may hold `{pk}` (a request, in the route's `state`), `{shift}` (an on-call
shift) or `{incident}` (the incident of that request). `expect` gives the status
for each caller; a pair is (on Alice's request, on Eve's request), where Alice's
is approved by the SRE leads (Bob) and Eve's by the payments leads (Dave).
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from django.contrib.admin import site as admin_site
from django.contrib.auth.models import User
from django.db.models import Max
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django_otp.plugins.otp_totp.models import TOTPDevice
from knox.models import AuthToken
from rest_framework.test import APIClient

from breakglass import oncall, roles, services
from breakglass.models import AuditEvent, OnCallShift

from .conftest import make_user, otp_code
from .flows import approve, make_ssh_ca, make_ssh_target, open_request
from .web_helpers import login

CALLERS = ("anonymous", "alice", "bob", "dave", "cora", "ada", "oscar")

WEB = "web"
API = "api"

# Shorthands for the cells.
LOGIN = "login"  # a redirect to the login page
ADMIN_LOGIN = "admin-login"  # a redirect to the admin's login page


@dataclass(frozen=True)
class Call:
    pattern: str
    method: str
    path: str
    expect: dict
    kind: str = WEB
    state: str = "pending"
    body: str = ""
    query: dict = field(default_factory=dict)

    @property
    def id(self):
        return f"{self.method} {self.path}"


def _everyone(status):
    return dict.fromkeys(CALLERS, status)


def _web_page(**statuses):
    return {**_everyone(200), "anonymous": LOGIN, **statuses}


def _api(**statuses):
    return {**_everyone(200), "anonymous": 401, **statuses}


TRAIL_READERS = {"alice": 403, "bob": 403, "dave": 403, "oscar": 403}
# Alice sees her own request, Bob the one he may approve, Dave Eve's; compliance
# and admins see both; Oscar neither.
SEES = {
    "alice": (200, 404),
    "bob": (200, 404),
    "dave": (404, 200),
    "cora": (200, 200),
    "ada": (200, 200),
    "oscar": (404, 404),
}


def _on_requests(ok, anonymous, **statuses):
    cells = {"anonymous": (anonymous, anonymous)}
    for caller, seen in SEES.items():
        cells[caller] = tuple(ok if s == 200 else s for s in seen)
    cells.update(statuses)
    return cells


R = "requests/<int:pk>/"
A = "api/v1/"

ROUTES = [
    # The web pages
    Call("", "GET", "/", _web_page()),
    Call("login/", "GET", "/login/", _everyone(200)),
    Call("logout/", "POST", "/logout/", _everyone(302)),
    Call("requests/", "GET", "/requests/", _web_page()),
    Call("awaiting/", "GET", "/awaiting/", _web_page()),
    Call("requests/new/preview/", "GET", "/requests/new/preview/", _web_page()),
    Call(R + "live/", "GET", "/requests/{pk}/live/", _on_requests(200, LOGIN)),
    Call("targets/<slug:name>/", "GET", "/targets/bastion/", _web_page()),
    Call(
        "requests/new/",
        "GET",
        "/requests/new/",
        _web_page(bob=403, dave=403, cora=403, ada=403, oscar=403),
    ),
    Call(
        "requests/new/",
        "POST",
        "/requests/new/",
        _web_page(alice=302, bob=403, dave=403, cora=403, ada=403, oscar=403),
        body="new_request_form",
    ),
    Call(R, "GET", "/requests/{pk}/", _on_requests(200, LOGIN)),
    Call(
        R + "approve/",
        "POST",
        "/requests/{pk}/approve/",
        _on_requests(403, LOGIN, bob=(302, 404), dave=(404, 302)),
        body="vote",
    ),
    Call(
        R + "deny/",
        "POST",
        "/requests/{pk}/deny/",
        _on_requests(403, LOGIN, bob=(302, 404), dave=(404, 302)),
        body="vote",
    ),
    Call(
        R + "cancel/",
        "POST",
        "/requests/{pk}/cancel/",
        _on_requests(403, LOGIN, alice=(302, 404)),
    ),
    Call(
        R + "end/",
        "POST",
        "/requests/{pk}/end/",
        _on_requests(302, LOGIN, cora=(403, 403)),
        state="active",
        body="end",
    ),
    Call(
        R + "credential/",
        "POST",
        "/requests/{pk}/credential/",
        _on_requests(403, LOGIN, alice=(200, 404)),
        state="active",
    ),
    Call(
        R + "review/",
        "POST",
        "/requests/{pk}/review/",
        _on_requests(403, LOGIN, alice=(302, 404)),
        state="ended",
        body="review",
    ),
    Call(
        R + "review/sign-off/",
        "POST",
        "/requests/{pk}/review/sign-off/",
        _on_requests(403, LOGIN, cora=(302, 302), ada=(302, 302)),
        state="submitted",
        body="sign_off",
    ),
    Call(
        R + "review/send-back/",
        "POST",
        "/requests/{pk}/review/send-back/",
        _on_requests(403, LOGIN, cora=(302, 302), ada=(302, 302)),
        state="submitted",
        body="send_back",
    ),
    Call(
        "reviews/",
        "GET",
        "/reviews/",
        _web_page(bob=403, dave=403, oscar=403),
    ),
    Call("oncall/", "GET", "/oncall/", _web_page()),
    Call("trail/", "GET", "/trail/", _web_page(**TRAIL_READERS)),
    Call(
        "trail/export/",
        "GET",
        "/trail/export/",
        _web_page(**TRAIL_READERS),
        query={"format": "csv"},
    ),
    Call("operations/", "GET", "/operations/", _web_page(**TRAIL_READERS)),
    Call("report/", "GET", "/report/", _web_page(**TRAIL_READERS)),
    Call(
        "report/export/",
        "GET",
        "/report/export/",
        _web_page(**TRAIL_READERS),
        query={"format": "csv"},
    ),
    Call(
        "incidents/<path:incident>/",
        "GET",
        "/incidents/{incident}/",
        _on_requests(200, LOGIN, **TRAIL_READERS),
    ),
    Call("account/otp/", "GET", "/account/otp/", _web_page()),
    Call(
        "account/otp/add/",
        "POST",
        "/account/otp/add/",
        {**_everyone(302), "anonymous": LOGIN},
        body="add_device",
    ),
    Call(
        "account/otp/confirm/",
        "POST",
        "/account/otp/confirm/",
        # Nobody has an authenticator waiting for its first code.
        {**_everyone(409), "anonymous": LOGIN},
        body="confirm_device",
    ),
    Call(
        "account/otp/discard/",
        "POST",
        "/account/otp/discard/",
        {**_everyone(302), "anonymous": LOGIN},
    ),
    Call("admin/", "GET", "/admin/", {**_everyone(ADMIN_LOGIN), "ada": 200}),
    # Probes, for load balancers and Prometheus: no login. No worker has sent a
    # heartbeat here, so the node is not ready.
    Call("healthz", "GET", "/healthz", _everyone(200)),
    Call("readyz", "GET", "/readyz", _everyone(503)),
    Call("metrics", "GET", "/metrics", _everyone(200)),
    # The API
    Call(A + "schema/", "GET", "/api/v1/schema/", _everyone(200)),
    Call(A + "requests/", "GET", "/api/v1/requests/", _api(), kind=API),
    Call(
        A + "requests/",
        "POST",
        "/api/v1/requests/",
        _api(alice=201, bob=403, dave=403, cora=403, ada=403, oscar=403),
        kind=API,
        body="new_request",
    ),
    Call(
        A + "requests/<int:pk>/",
        "GET",
        "/api/v1/requests/{pk}/",
        _on_requests(200, 401),
        kind=API,
    ),
    Call(
        A + "requests/<int:pk>/approve/",
        "POST",
        "/api/v1/requests/{pk}/approve/",
        _on_requests(403, 401, bob=(200, 404), dave=(404, 200)),
        kind=API,
        body="vote",
    ),
    Call(
        A + "requests/<int:pk>/deny/",
        "POST",
        "/api/v1/requests/{pk}/deny/",
        _on_requests(403, 401, bob=(200, 404), dave=(404, 200)),
        kind=API,
        body="vote",
    ),
    Call(
        A + "requests/<int:pk>/cancel/",
        "POST",
        "/api/v1/requests/{pk}/cancel/",
        _on_requests(403, 401, alice=(200, 404)),
        kind=API,
    ),
    Call(
        A + "requests/<int:pk>/revoke/",
        "POST",
        "/api/v1/requests/{pk}/revoke/",
        _on_requests(200, 401, cora=(403, 403)),
        kind=API,
        state="active",
        body="end",
    ),
    Call(
        A + "requests/<int:pk>/credential/",
        "POST",
        "/api/v1/requests/{pk}/credential/",
        _on_requests(403, 401, alice=(200, 404)),
        kind=API,
        state="active",
    ),
    Call(
        A + "requests/<int:pk>/review/",
        "POST",
        "/api/v1/requests/{pk}/review/",
        _on_requests(403, 401, alice=(200, 404)),
        kind=API,
        state="ended",
        body="review",
    ),
    Call(
        A + "requests/<int:pk>/review/sign-off/",
        "POST",
        "/api/v1/requests/{pk}/review/sign-off/",
        _on_requests(403, 401, cora=(200, 200), ada=(200, 200)),
        kind=API,
        state="submitted",
        body="sign_off",
    ),
    Call(
        A + "requests/<int:pk>/review/send-back/",
        "POST",
        "/api/v1/requests/{pk}/review/send-back/",
        _on_requests(403, 401, cora=(200, 200), ada=(200, 200)),
        kind=API,
        state="submitted",
        body="send_back",
    ),
    Call(
        A + "reviews/",
        "GET",
        "/api/v1/reviews/",
        _api(bob=403, dave=403, oscar=403),
        kind=API,
    ),
    Call(A + "audit/", "GET", "/api/v1/audit/", _api(**TRAIL_READERS), kind=API),
    Call(
        A + "audit/verify/",
        "GET",
        "/api/v1/audit/verify/",
        _api(**TRAIL_READERS),
        kind=API,
    ),
    Call(
        A + "audit/export/",
        "GET",
        "/api/v1/audit/export/",
        _api(**TRAIL_READERS),
        kind=API,
    ),
    Call(A + "oncall/", "GET", "/api/v1/oncall/", _api(), kind=API),
    Call(
        A + "oncall/",
        "POST",
        "/api/v1/oncall/",
        {**_everyone(403), "anonymous": 401, "ada": 201},
        kind=API,
        body="shift",
    ),
    Call(
        A + "oncall/<int:pk>/",
        "GET",
        "/api/v1/oncall/{shift}/",
        _api(),
        kind=API,
    ),
    Call(
        A + "oncall/<int:pk>/",
        "DELETE",
        "/api/v1/oncall/{shift}/",
        {**_everyone(403), "anonymous": 401, "ada": 204},
        kind=API,
    ),
    Call(
        A + "operations/failing-revocations/",
        "GET",
        "/api/v1/operations/failing-revocations/",
        _api(**TRAIL_READERS),
        kind=API,
    ),
    Call(
        A + "reports/compliance/",
        "GET",
        "/api/v1/reports/compliance/",
        _api(**TRAIL_READERS),
        kind=API,
    ),
    Call(
        A + "^(?P<path>.*/)$",
        "GET",
        "/api/v1/no-such-thing/",
        {**_everyone(404), "anonymous": 401},
        kind=API,
    ),
]


def resolver_patterns():
    """Return every URL pattern of the project outside the admin, as text."""
    found = []

    def walk(patterns, prefix):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.namespace == admin_site.name:
                    # The admin's own pages are the admin's; its entry stands for them.
                    found.append(prefix + str(entry.pattern))
                    continue
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                found.append(prefix + str(entry.pattern))

    walk(get_resolver().url_patterns, "")
    return found


# Calling them


@pytest.fixture
def world(db, tmp_path, monkeypatch, alice, bob, carol, dave, cora, ada, oscar):
    eve = make_user("eve", roles.REQUESTER, groups=["oncall"])
    pat = make_user("pat", roles.APPROVER, groups=["payments-leads"], totp=True)
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target("bastion", approvals=1)
    make_ssh_target("vault", approvals=1, approver_groups=("payments-leads",))
    return {
        "own": open_request(alice, target="bastion", incident="INC-1"),
        "other": open_request(eve, target="vault", incident="INC-2"),
        "approvers": {"bastion": carol, "vault": pat},
    }


def _bring_to(access_request, state, approver):
    if state == "pending":
        return access_request
    approve(access_request, approver)
    access_request.refresh_from_db()
    services.issue_grant(access_request.grant.pk)
    if state in ("ended", "submitted"):
        requester = access_request.requester
        services.request_end(access_request.pk, actor=requester, reason="fixed")
        services.end_grant(access_request.grant.pk)
    if state == "submitted":
        services.submit_review(
            access_request.pk, actor=access_request.requester, summary="Cleared."
        )
    access_request.refresh_from_db()
    return access_request


def body_for(name, user):
    has_device = user is not None and TOTPDevice.objects.filter(user=user).exists()
    code = otp_code(user) if has_device else "123456"
    bodies = {
        "": {},
        "new_request": {
            "target": "bastion",
            "scope": "read",
            "duration_minutes": 30,
            "reason": "disk full",
            "incident": "INC-9",
        },
        "new_request_form": {
            "target": "bastion",
            "scope": "bastion:read",
            "duration_minutes": 30,
            "reason": "disk full",
            "incident": "INC-9",
        },
        "vote": {"otp": code, "comment": ""},
        "end": {"reason": "done"},
        "review": {"summary": "Cleared the queue."},
        "sign_off": {"comment": ""},
        "send_back": {"comment": "Say which tables."},
        "add_device": {
            "name": "tablet",
            "password": f"pw-{user.username}" if user else "",
            **({"current_code": code} if has_device else {}),
        },
        "confirm_device": {"code": "123456"},
        "shift": {
            "user": "alice",
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-01-02T00:00:00Z",
        },
    }
    return bodies[name]


def _shift():
    ada = User.objects.get(username="ada")
    return oncall.add_oncall_shift(
        user=ada,
        starts_at=datetime(2030, 2, 1, tzinfo=UTC),
        ends_at=datetime(2030, 2, 1, 8, tzinfo=UTC),
        actor=ada,
        source=OnCallShift.Source.API,
    )


def client_for(call, user):
    if call.kind == API:
        client = APIClient()
        if user is not None:
            _, token = AuthToken.objects.create(user=user, expiry=None)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        return client
    return login(user) if user is not None else Client()


def prepare(call, world, which):
    """Bring the request to the call's state; return the address to call."""
    access_request = _bring_to(
        world[which], call.state, world["approvers"][world[which].target.name]
    )
    shift = _shift() if "{shift}" in call.path else None
    path = call.path.format(
        pk=access_request.pk,
        shift=shift and shift.pk,
        incident=access_request.incident,
    )
    return path


def send(call, user, path, *, client=None, **extra):
    """Make the call as the user, with their usual client unless one is given."""
    client = client or client_for(call, user)
    data = body_for(call.body, user)
    method = getattr(client, call.method.lower())
    if call.method == "GET":
        return method(path, call.query, **extra)
    if call.kind == API:
        return method(path, data, format="json", **extra)
    return method(path, data, **extra)


def last_seq():
    return AuditEvent.objects.aggregate(last=Max("seq"))["last"]
