"""Property-based fuzzing of the whole API from its own OpenAPI document.

Schemathesis generates requests for every operation the document names, valid and
not, and calls the application in process. Whoever asks, the API never answers 5xx
and every answer is one the document describes: a documented status, a body of
the documented shape, the documented content type.
"""

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from knox.models import AuthToken
from schemathesis.checks import positive_data_acceptance

from breakglass.models import AccessRequest, Target

from .flows import approve, issued_request, make_ssh_ca, make_ssh_target, open_request

MAX_EXAMPLES = 12


@pytest.fixture
def app(db, tmp_path, monkeypatch, alice, bob, carol, cora, ada):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target(approvals=1)
    # Something in every state a caller may act on: pending, approved, active.
    open_request(alice, reason="'; DROP TABLE breakglass_accessrequest; --")
    approve(open_request(alice, incident="INC-7"), bob)
    issued_request(alice, carol, incident="INC-8")
    # Environment is optional free text: an empty one is still a valid answer.
    make_ssh_target("scratch", approvals=1)
    Target.objects.filter(name="scratch").update(environment="")
    open_request(alice, target="scratch", incident="INC-9")

    # As Django's test client does: the test's transaction is the only connection,
    # and the handler would close it at the end of every request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# Made from the code alone: loading it needs no database.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())


@pytest.fixture
def callers(app):
    """Return the headers of the requester, an approver, compliance and an admin."""
    headers = []
    for username in ("alice", "bob", "cora", "ada"):
        user = User.objects.get(username=username)
        _, token = AuthToken.objects.create(user=user, expiry=None)
        headers.append({"Authorization": f"Token {token}"})
    return headers


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_answer_breaks_the_document(case, app, callers):
    for headers in callers:
        # Business rules refuse well-formed values too (an unknown target, a range
        # too long): a documented 400, not a schema violation.
        case.call_and_validate(
            headers=headers, app=app, excluded_checks=[positive_data_acceptance]
        )


def test_a_request_on_a_target_without_environment_matches_the_document(app, callers):
    found = AccessRequest.objects.get(target__name="scratch")
    operation = schema["/api/v1/requests/{id}/"]["GET"]
    case = operation.Case(path_parameters={"id": found.pk})

    response = case.call_and_validate(headers=callers[0], app=app)

    assert response.json()["environment"] == ""
