"""Requests made at the same moment by one requester respect the policy's limit."""

import threading

import pytest
from django.db import connection

from breakglass import services
from breakglass.errors import Throttled
from breakglass.models import AccessRequest

from .flows import make_ssh_ca, make_ssh_target


@pytest.mark.django_db(transaction=True)
def test_two_requests_at_once_cannot_both_pass_a_limit_of_one(
    alice, tmp_path, monkeypatch
):
    make_ssh_ca(tmp_path, monkeypatch)
    target = make_ssh_target()
    target.policy.max_active_grants = 1
    target.policy.save()
    start = threading.Barrier(2)
    outcomes = []

    def ask(incident):
        try:
            start.wait()
            services.create_request(
                requester=alice,
                target="bastion",
                scope="read",
                duration_minutes=30,
                reason="disk full",
                incident=incident,
            )
            outcomes.append("created")
        except Throttled as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(f"INC-{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["created", "too_many_grants"]
    assert AccessRequest.objects.filter(requester=alice).count() == 1
