"""Every address of the project, with a request that exercises it, for the matrix tests.

`ROUTES` names each URL pattern of the resolver with the calls made on it. A call's
path may hold `{pk}` (a request, in the route's `state`), `{shift}` (an on-call
shift) or `{incident}` (the incident of that request). `expect` gives the status
for each caller; a pair is (on Alice's request, on Eve's request), where Alice's
is approved by the SRE leads (Bob) and Eve's by the payments leads (Dave).
"""

from dataclasses import dataclass, field

from django.contrib.admin import site as admin_site
from django.urls import URLPattern, URLResolver, get_resolver

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
