"""Three requests spread over a week, for the history search tests.

Import the fixtures under their function names; pytest knows them as `erin` and
`history`.
"""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from approvals import services as approval_services
from breakglass import roles, services

from .conftest import make_user, otp_code
from .flows import issued_request, make_ssh_ca, make_ssh_target, open_request

DAY_1 = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
DAY_3 = datetime(2030, 3, 3, 9, 0, tzinfo=UTC)
DAY_5 = datetime(2030, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(name="erin")
def erin_fixture(db):
    return make_user("erin", roles.REQUESTER, groups=["oncall"])


@pytest.fixture(name="history")
def history_fixture(db, tmp_path, monkeypatch, alice, bob, carol, erin):
    """Alice's expired grant (day 1), her denied request (day 3), Erin's (day 5)."""
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    with time_machine.travel(DAY_1, tick=False):
        expired = issued_request(alice, bob, carol, incident="INC-1")
    with time_machine.travel(
        expired.grant.expires_at + timedelta(seconds=2), tick=False
    ):
        assert services.sweep()["ended"] == 1
    with time_machine.travel(DAY_3, tick=False):
        denied = open_request(alice, incident="INC-2")
        approval_services.deny_request(
            denied.pk, approver=carol, code=otp_code(carol), comment="not now"
        )
    with time_machine.travel(DAY_5, tick=False):
        pending = open_request(erin, incident="INC-1")
    for access_request in (expired, denied, pending):
        access_request.refresh_from_db()
    return expired, denied, pending
