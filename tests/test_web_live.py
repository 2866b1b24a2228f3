"""The live parts of the pages: the decision preview, the status box and the queue.

Each is a small fragment a page polls or fetches; each also reads well on its own,
and the full page carries the same content for readers without JavaScript.
"""

import re
from html import unescape

import pytest
from django.test import Client

from breakglass import services
from breakglass.models import AccessRequest

from .conftest import make_target
from .web_helpers import approve, issue, login, make_ssh_target, open_request

Status = AccessRequest.Status


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    return make_ssh_target(tmp_path, monkeypatch)


@pytest.fixture
def pending(bastion, alice):
    return open_request(alice)


@pytest.fixture
def active(pending, bob, carol):
    approve(pending, bob, carol)
    issue(pending)
    pending.refresh_from_db()
    return pending


def text_of(response):
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", response.text)))


def shown_of(response):
    return re.search(r'name="shown" value="([^"]*)"', response.text).group(1)


# The decision preview on the new request form


def test_the_preview_says_what_the_chosen_scope_needs(bastion, alice):
    page = login(alice).get(
        "/requests/new/preview/", {"target": "bastion", "scope": "bastion:read"}
    )

    assert page.status_code == 200
    text = text_of(page)
    assert "bastion / read needs 2 approvals: production" in text
    assert "Approved by sre-leads" in text
    assert "Longest duration 60 minutes" in text
    assert "Requester on call no" in text


def test_the_preview_names_the_policy_refusal(bastion, alice):
    make_target("payments-db", "postgres", grants=["x"], requester_groups=["payments"])

    page = login(alice).get(
        "/requests/new/preview/", {"target": "payments-db", "scope": "read"}
    )

    assert page.status_code == 200
    assert "Only members of payments may request access to payments-db" in (
        text_of(page)
    )


@pytest.mark.parametrize(
    "query",
    [
        {"target": "nowhere", "scope": "read"},
        {"target": "bastion", "scope": "root"},
        {"target": "bastion", "scope": "other:read"},
    ],
)
def test_the_preview_refuses_what_the_form_does_not_offer(bastion, alice, query):
    page = login(alice).get("/requests/new/preview/", query)

    assert page.status_code == 200
    text = text_of(page)
    assert "needs" not in text
    assert "not offered" in text or "Choose a target and a scope" in text


def test_the_preview_asks_for_a_choice_first(bastion, alice):
    page = login(alice).get("/requests/new/preview/")

    assert "Choose a target and a scope" in text_of(page)


def test_the_fragments_need_a_login(pending):
    for url in [
        "/requests/new/preview/",
        f"/requests/{pending.pk}/live/",
        "/awaiting/",
    ]:
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")


def test_the_form_links_the_preview_and_is_complete_without_it(bastion, alice):
    page = login(alice).get("/requests/new/")

    assert 'hx-get="/requests/new/preview/"' in page.text
    # Without JavaScript, every target's policy is on the page itself.
    assert "For you now: 2 approvals: production" in unescape(page.text)


# The status box of a request


def test_the_status_box_follows_the_votes_and_skips_unchanged_polls(
    pending, alice, bob, carol
):
    client = login(alice)
    url = f"/requests/{pending.pk}/live/"

    first = client.get(url)
    assert first.status_code == 200
    assert "0 of 2 approvals received" in text_of(first)
    assert 'hx-trigger="every 2s' in first.text
    assert client.get(url, {"shown": shown_of(first)}).status_code == 204

    approve(pending, bob)
    second = client.get(url, {"shown": shown_of(first)})
    assert second.status_code == 200
    assert "1 of 2 approvals received" in text_of(second)
    assert "bob approved" in text_of(second)

    approve(pending, carol)
    third = client.get(url, {"shown": shown_of(second)})
    assert "Approved: the credential is being created" in text_of(third)

    issue(pending)
    fourth = client.get(url, {"shown": shown_of(third)})
    text = text_of(fourth)
    assert "Active until" in text
    assert "Reveal credential" in text
    assert "End access now" in text
    assert 'class="countdown"' in fourth.text


def test_the_status_box_stops_polling_once_the_request_is_over(active, alice):
    services.request_end(active.pk, actor=alice)
    services.end_grant(active.grant.pk)

    box = login(alice).get(f"/requests/{active.pk}/live/")

    assert "Ended early" in text_of(box)
    assert "hx-trigger" not in box.text
    assert "Record what you did with the access" in text_of(box)


def test_the_status_box_is_for_those_who_see_the_request(pending, dave, oscar):
    for user in [dave, oscar]:
        assert login(user).get(f"/requests/{pending.pk}/live/").status_code == 404


def test_the_request_page_carries_the_status_box(active, alice):
    page = login(alice).get(f"/requests/{active.pk}/")

    assert page.status_code == 200
    assert 'id="live"' in page.text
    assert f'hx-get="/requests/{active.pk}/live/"' in page.text


def test_an_extension_is_a_new_request_prefilled_from_the_active_one(active, alice):
    page = login(alice).get(f"/requests/{active.pk}/")

    link = re.search(r'href="(/requests/new/\?[^"]+)"', page.text).group(1)
    assert "Request an extension" in page.text
    form = login(alice).get(unescape(link))
    assert form.status_code == 200
    assert '<option value="bastion" selected>' in form.text
    assert '<option value="bastion:read" selected>' in form.text
    assert 'value="INC-1"' in form.text
    assert f"Extension of request {active.pk}: Disk full" in form.text


def test_only_the_requester_is_offered_an_extension(active, bob):
    assert "Request an extension" not in login(bob).get(f"/requests/{active.pk}/").text


# What an approver reads before deciding


def test_the_approver_sees_the_requesters_previous_use(bastion, alice, bob, carol):
    earlier = open_request(alice, incident="INC-7")
    approve(earlier, bob, carol)
    issue(earlier)
    services.cancel_request(open_request(alice, incident="INC-8").pk, actor=alice)
    now = open_request(alice, incident="INC-9")

    text = text_of(login(bob).get(f"/requests/{now.pk}/"))

    assert "Previous break-glass use by alice" in text
    assert "2 other requests, 1 of them granted" in text
    assert "INC-7" in text and "INC-8" in text
    assert "On call now no" in text


def test_previous_use_counts_all_but_lists_only_what_the_approver_may_open(
    bastion, alice, bob
):
    make_target("ledger-db", "postgres", grants=["x"], approver_groups=["dba-leads"])
    open_request(alice, target="ledger-db", incident="INC-31")
    now = open_request(alice, incident="INC-32")

    text = text_of(login(bob).get(f"/requests/{now.pk}/"))

    assert "1 other request, 0 of them granted; none of them is one you may open." in (
        text
    )
    assert "INC-31" not in text and "ledger-db" not in text


def test_a_first_request_says_so(pending, bob):
    text = text_of(login(bob).get(f"/requests/{pending.pk}/"))

    assert "None: this is the first request by alice." in text


# The approver's queue


def test_the_queue_lists_what_waits_and_skips_unchanged_polls(bastion, alice, bob):
    client = login(bob)

    empty = client.get("/awaiting/")
    assert "Nothing waits for your decision." in text_of(empty)

    pending = open_request(alice)
    listed = client.get("/awaiting/", {"shown": shown_of(empty)})
    assert listed.status_code == 200
    assert f"/requests/{pending.pk}/" in listed.text
    assert client.get("/awaiting/", {"shown": shown_of(listed)}).status_code == 204


def test_the_home_page_polls_the_queue_for_approvers_only(pending, alice, bob):
    assert 'hx-get="/awaiting/"' in login(bob).get("/").text
    assert 'hx-get="/awaiting/"' not in login(alice).get("/").text
