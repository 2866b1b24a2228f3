"""The on-call roster page: current and upcoming shifts, for everyone signed in."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client

from breakglass import oncall
from breakglass.models import OnCallShift

from .web_helpers import login

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.fixture
def roster(ada, alice, bob):
    def add(user, start, end, note):
        return oncall.add_oncall_shift(
            user=user,
            starts_at=NOW + timedelta(hours=start),
            ends_at=NOW + timedelta(hours=end),
            note=note,
            actor=ada,
            source=OnCallShift.Source.API,
        )

    return [
        add(alice, -30, -20, "yesterday's"),
        add(alice, -2, 6, "primary today"),
        add(bob, 6, 30, "tonight"),
    ]


def test_everyone_signed_in_sees_current_and_upcoming_shifts(roster, alice, oscar):
    for user in [alice, oscar]:
        with time_machine.travel(NOW, tick=False):
            page = login(user).get("/oncall/")

        assert page.status_code == 200
        text = page.text
        assert "primary today" in text
        assert "tonight" in text
        assert "yesterday&#x27;s" not in text and "yesterday's" not in text
        assert (
            '<time datetime="2026-12-07T08:00:00+00:00">2026-12-07 08:00:00 UTC' in text
        )
        assert "2026-12-08 16:00:00 UTC" in text
        # Only the shift under way is marked as now.
        assert text.count("on call now") == 1
        assert text.index("on call now") < text.index("tonight")
        assert "Edit the roster in the admin" not in text


def test_the_roster_is_linked_from_every_page_and_admins_get_the_editor(roster, ada):
    home = login(ada).get("/")
    assert '<a href="/oncall/">On call</a>' in home.text

    with time_machine.travel(NOW, tick=False):
        page = login(ada).get("/oncall/")
    assert "Edit the roster in the admin" in page.text
    assert 'href="/admin/breakglass/oncallshift/"' in page.text


def test_an_empty_roster_says_so(alice):
    page = login(alice).get("/oncall/")
    assert page.status_code == 200
    assert "Nobody is on call now or later." in page.text


def test_the_roster_page_is_read_only_and_needs_a_login(roster, ada):
    response = Client().get("/oncall/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")

    assert login(ada).post("/oncall/", {"user": "alice"}).status_code == 405
    assert OnCallShift.objects.count() == 3
