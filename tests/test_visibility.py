"""Who sees a request and who may decide on it, on the API, the web and the services.

Alice asks; Bob and Carol approve for the SRE leads; Dave approves for the payments
team; Cora reviews for compliance; Ada administers; Oscar has no role. Rita both
asks and approves for the SRE leads.
"""

import pytest
from django.contrib.auth.models import Group

from approvals import services as approval_services
from approvals.models import Approval
from breakglass import roles, selectors
from breakglass.errors import NotAllowed

from .conftest import make_user, otp_code
from .flows import actions, make_ssh_ca, make_ssh_target, open_request
from .web_helpers import login


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    return make_ssh_target()


@pytest.fixture
def people(alice, bob, carol, dave, cora, ada, oscar):
    return {
        "alice": alice,
        "bob": bob,
        "carol": carol,
        "dave": dave,
        "cora": cora,
        "ada": ada,
        "oscar": oscar,
    }


@pytest.fixture
def pending(people, bastion):
    return open_request(people["alice"])


def _api_url(access_request, action=""):
    suffix = f"{action}/" if action else ""
    return f"/api/v1/requests/{access_request.pk}/{suffix}"


def _web_url(access_request, action=""):
    suffix = f"{action}/" if action else ""
    return f"/requests/{access_request.pk}/{suffix}"


# (who, sees it, may vote on it)
ROLES = [
    ("alice", True, False),  # the requester
    ("bob", True, True),  # an eligible approver
    ("carol", True, True),
    ("dave", False, False),  # an approver of another group
    ("cora", True, False),  # compliance
    ("ada", True, False),  # an admin
    ("oscar", False, False),  # nobody in particular
]


@pytest.mark.parametrize("who, sees, votes", ROLES)
def test_each_role_on_the_api(api, people, pending, who, sees, votes):
    client = api(people[who])

    detail = client.get(_api_url(pending))
    listed = client.get("/api/v1/requests/")

    assert listed.status_code == 200
    assert (pending.pk in [r["id"] for r in listed.json()]) is sees
    if sees:
        assert detail.status_code == 200
        assert detail.json()["reason"] == "disk full on the primary"
    else:
        assert detail.status_code == 404
        assert detail.json()["code"] == "not_found"
        # Nothing in the answer tells an outsider the request exists.
        assert "disk full" not in detail.content.decode()


@pytest.mark.parametrize("who, sees, votes", ROLES)
def test_each_role_on_the_web(people, pending, who, sees, votes):
    page = login(people[who]).get(_web_url(pending))

    if sees:
        assert page.status_code == 200
        assert "disk full on the primary" in page.text
        assert ('name="otp"' in page.text) is votes
    else:
        assert page.status_code == 404
        assert "disk full" not in page.text


@pytest.mark.parametrize(
    "who, status, code",
    [
        ("dave", 404, "not_found"),
        ("oscar", 404, "not_found"),
        ("cora", 403, "not_eligible"),
        ("ada", 403, "not_eligible"),
        ("alice", 403, "self_approval"),
    ],
)
def test_only_eligible_approvers_may_vote_on_the_api(
    api, people, pending, who, status, code
):
    user = people[who]

    for action in ("approve", "deny"):
        response = api(user).post(
            _api_url(pending, action), {"otp": "123456"}, format="json"
        )
        assert response.status_code == status, (action, response.content)
        assert response.json()["code"] == code

    pending.refresh_from_db()
    assert (pending.status, pending.approvals.count()) == ("pending", 0)
    assert actions(pending) == ["request.created"]


@pytest.mark.parametrize("who", ["dave", "oscar"])
def test_an_invisible_request_is_404_on_the_web_decisions(people, pending, who):
    client = login(people[who])

    for action in ("approve", "deny", "cancel", "end", "credential"):
        response = client.post(_web_url(pending, action), {"otp": "123456"})
        assert response.status_code == 404, action

    assert actions(pending) == ["request.created"]


def test_a_request_for_any_approver_is_visible_to_every_approver(api, people, bastion):
    bastion.policy.approver_groups.clear()
    access_request = open_request(people["alice"])

    assert api(people["dave"]).get(_api_url(access_request)).status_code == 200
    assert api(people["oscar"]).get(_api_url(access_request)).status_code == 404
    response = api(people["dave"]).post(
        _api_url(access_request, "approve"),
        {"otp": otp_code(people["dave"])},
        format="json",
    )
    assert response.status_code == 200, response.content


# Approver groups per scope


@pytest.fixture
def owner_request(people, bastion):
    owner = bastion.scopes.create(name="owner", grants=["root"])
    owner.approver_groups.set([Group.objects.get(name="payments-leads")])
    return open_request(people["alice"], scope="owner")


def test_a_scope_names_its_own_approvers(api, people, owner_request):
    dave = people["dave"]
    assert [g.name for g in owner_request.approver_groups.all()] == ["payments-leads"]
    assert owner_request.decision["approver_groups"] == ["payments-leads"]
    assert selectors.approver_emails(owner_request) == ["dave@example.com"]

    approved = api(dave).post(
        _api_url(owner_request, "approve"), {"otp": otp_code(dave)}, format="json"
    )

    assert approved.status_code == 200, approved.content
    assert [a["approver"] for a in approved.json()["approvals"]] == ["dave"]
    assert login(dave).get(_web_url(owner_request)).status_code == 200


def test_the_policy_approvers_may_not_vote_where_the_scope_overrides(
    api, people, owner_request
):
    bob = people["bob"]

    assert api(bob).get(_api_url(owner_request)).status_code == 404
    response = api(bob).post(
        _api_url(owner_request, "approve"), {"otp": otp_code(bob)}, format="json"
    )
    assert response.status_code == 404
    assert login(bob).get(_web_url(owner_request)).status_code == 404
    with pytest.raises(NotAllowed) as refused:
        approval_services.approve_request(
            owner_request.pk, approver=bob, code=otp_code(bob)
        )
    assert refused.value.code == "not_eligible"
    assert not Approval.objects.exists()


def test_other_scopes_keep_the_policy_approvers(api, people, owner_request):
    read_request = open_request(people["alice"], incident="INC-43")

    assert read_request.decision["approver_groups"] == ["sre-leads"]
    assert api(people["bob"]).get(_api_url(read_request)).status_code == 200
    assert api(people["dave"]).get(_api_url(read_request)).status_code == 404


# Nobody approves their own request


@pytest.fixture
def rita(db):
    return make_user(
        "rita",
        roles.REQUESTER,
        roles.APPROVER,
        groups=["oncall", "sre-leads"],
        totp=True,
    )


@pytest.mark.parametrize("approver_groups", [["sre-leads"], ["oncall"], []])
def test_a_requester_who_approves_cannot_approve_their_own_request(
    api, rita, bob, bastion, approver_groups
):
    bastion.policy.approver_groups.set(
        [Group.objects.get(name=name) for name in approver_groups]
    )
    mine = open_request(rita)
    assert "rita@example.com" not in selectors.approver_emails(mine)
    assert selectors.awaiting_decision(rita) == []

    for action in ("approve", "deny"):
        response = api(rita).post(
            _api_url(mine, action), {"otp": otp_code(rita)}, format="json"
        )
        assert response.status_code == 403, response.content
        assert response.json()["code"] == "self_approval"

    page = login(rita).get(_web_url(mine))
    assert page.status_code == 200
    assert 'name="otp"' not in page.text
    posted = login(rita).post(_web_url(mine, "approve"), {"otp": otp_code(rita)})
    assert posted.status_code == 403

    with pytest.raises(NotAllowed) as refused:
        approval_services.approve_request(mine.pk, approver=rita, code=otp_code(rita))
    assert refused.value.code == "self_approval"

    mine.refresh_from_db()
    assert (mine.status, mine.approvals.count()) == ("pending", 0)
    assert actions(mine) == ["request.created"]


def test_the_same_person_approves_others_requests(api, alice, rita, bastion):
    theirs = open_request(alice)

    response = api(rita).post(
        _api_url(theirs, "approve"), {"otp": otp_code(rita)}, format="json"
    )

    assert response.status_code == 200, response.content
    assert theirs.approvals.get().approver == rita
