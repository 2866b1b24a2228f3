"""Groups that policies, scopes and requests name outlive them.

Were such a group deleted, a policy naming it would read as "any approver" (or
"any requester") and a request's approvers as every approver.
"""

import pytest
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import ProtectedError

from breakglass.models import Policy, Scope

from .conftest import make_target
from .web_helpers import login, open_request


@pytest.fixture
def orders(db):
    return make_target("orders-db", "postgres", grants=["pg_read_all_data"])


def test_a_group_a_policy_names_cannot_be_deleted(orders):
    group = Group.objects.get(name="sre-leads")

    with pytest.raises(ProtectedError, match="sre-leads"), transaction.atomic():
        group.delete()

    assert list(orders.policy.approver_groups.values_list("name", flat=True)) == [
        "sre-leads"
    ]


def test_a_requester_group_and_a_scopes_approver_group_are_kept_too(orders):
    requesters = Group.objects.create(name="oncall-eu")
    dbas = Group.objects.create(name="dba-leads")
    orders.policy.requester_groups.add(requesters)
    Scope.objects.get(target=orders).approver_groups.add(dbas)

    for group in (requesters, dbas):
        with pytest.raises(ProtectedError), transaction.atomic():
            group.delete()

    assert Group.objects.filter(name__in=["oncall-eu", "dba-leads"]).count() == 2


def test_a_group_a_request_was_decided_with_is_kept_after_the_policy_moves_on(
    db, tmp_path, monkeypatch, alice
):
    from .web_helpers import make_ssh_target

    make_ssh_target(tmp_path, monkeypatch)
    access_request = open_request(alice)
    policy = Policy.objects.get(target__name="bastion")
    policy.approver_groups.clear()

    with pytest.raises(ProtectedError), transaction.atomic():
        Group.objects.get(name="sre-leads").delete()

    assert [g.name for g in access_request.approver_groups.all()] == ["sre-leads"]


def test_a_group_nothing_names_can_be_deleted(orders):
    Group.objects.create(name="former-team")

    Group.objects.get(name="former-team").delete()

    assert not Group.objects.filter(name="former-team").exists()


def test_the_admin_shows_the_group_as_protected_and_keeps_it(orders, ada):
    client = login(ada)
    group = Group.objects.get(name="sre-leads")
    url = f"/admin/auth/group/{group.pk}/delete/"

    page = client.get(url)
    assert page.status_code == 200
    assert "policy for orders-db" in page.text
    response = client.post(url, {"post": "yes"})

    assert response.status_code == 200
    assert "policy for orders-db" in response.text
    assert Group.objects.filter(name="sre-leads").exists()


def test_the_admins_bulk_delete_keeps_groups_in_use(orders, ada):
    client = login(ada)
    unused = Group.objects.create(name="former-team")
    used = Group.objects.get(name="sre-leads")

    response = client.post(
        "/admin/auth/group/",
        {
            "action": "delete_selected",
            "_selected_action": [used.pk, unused.pk],
            "post": "yes",
        },
    )

    assert response.status_code == 200
    assert "policy for orders-db" in response.text
    assert set(Group.objects.values_list("name", flat=True)) >= {
        "sre-leads",
        "former-team",
    }
