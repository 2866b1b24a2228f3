"""The history page: every request a person may see, searchable, paginated."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from breakglass import views

from .history_fixtures import erin_fixture, history_fixture  # noqa: F401
from .web_helpers import login, open_request

URL = "/requests/"


def listed(page):
    assert page.status_code == 200, page.content
    return page.text.count('<td data-label="#">')


def shows(page, access_request):
    return f'<td data-label="#"><a href="/requests/{access_request.pk}/">' in page.text


def test_history_is_in_the_navigation(history, alice):
    assert f'href="{URL}"' in login(alice).get("/").text


def test_everyone_sees_only_what_they_may(history, alice, erin, bob, oscar, cora, ada):
    expired, denied, pending = history

    page = login(alice).get(URL)
    assert listed(page) == 2
    assert shows(page, expired) and shows(page, denied)
    assert not shows(page, pending)
    assert listed(login(erin).get(URL)) == 1
    assert listed(login(oscar).get(URL)) == 0
    for user in (bob, cora, ada):
        assert listed(login(user).get(URL)) == 3, user
    assert listed(login(alice).get(URL, {"requester": "erin"})) == 0


def test_search_by_every_filter(history, cora):
    expired, denied, pending = history
    client = login(cora)

    def found(**query):
        page = client.get(URL, query)
        return [r for r in history if shows(page, r)], listed(page)

    assert found(requester="alice") == ([expired, denied], 2)
    assert found(approver="bob") == ([expired], 1)
    assert found(approver="carol") == ([expired, denied], 2)
    assert found(target="bastion", incident="INC-1") == ([expired, pending], 2)
    assert found(status="expired") == ([expired], 1)
    assert found(status="denied") == ([denied], 1)
    assert found(since="2030-03-03") == ([denied, pending], 2)
    assert found(until="2030-03-03") == ([expired, denied], 2)
    assert found(since="2030-03-02", until="2030-03-04") == ([denied], 1)


def test_votes_are_shown(history, cora):
    page = login(cora).get(URL, {"status": "denied"})
    assert "carol (Denied)" in page.text


def test_bad_filters_get_400_with_the_reason(history, cora):
    client = login(cora)
    for query, message in [
        ({"since": "yesterday"}, "Enter a valid date."),
        ({"since": "2030-03-03", "until": "2030-03-01"}, "Must not be before"),
        ({"status": "sleeping"}, "Select a valid choice."),
        ({"approvr": "bob"}, "Unknown filter: approvr."),
    ]:
        page = client.get(URL, query)
        assert page.status_code == 400, query
        assert message in page.text
        assert listed_rows(page) == 0


def listed_rows(page):
    return page.text.count('<td data-label="#">')


def test_pages_cost_the_same_queries_however_full(history, alice, cora, monkeypatch):
    monkeypatch.setattr(views, "HISTORY_PAGE_SIZE", 2)
    for _ in range(3):
        open_request(alice, incident="INC-9")
    client = login(cora)

    def queries(query):
        with CaptureQueriesContext(connection) as captured:
            page = client.get(URL, query)
        assert page.status_code == 200
        return len(captured), listed(page)

    # Six requests, three pages of two: pending and denied, expired and one of
    # INC-9, then two of INC-9. Every page with votes costs the same.
    full, rows = queries({})
    assert rows == 2
    assert queries({"page": "2"}) == (full, 2)
    assert queries({"approver": "carol"}) == (full, 2)
    assert queries({"page": "3"})[0] <= full
    assert full <= 12
