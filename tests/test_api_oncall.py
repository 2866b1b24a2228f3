"""REST API: the on-call roster, and the policy decision shown on each request."""

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
import time_machine
from django.db import connection

from breakglass import oncall
from breakglass.errors import InvalidInput, NotAllowed
from breakglass.models import Alert, AuditEvent, OnCallShift, Policy

from .conftest import make_user
from .flows import make_ssh_ca, make_ssh_target, open_request

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a Monday
URL = "/api/v1/oncall/"


@pytest.fixture(autouse=True)
def _clock():
    with time_machine.travel(NOW, tick=False):
        yield


def at(hours, minutes=0):
    return NOW + timedelta(hours=hours, minutes=minutes)


def iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


def shift_body(user="alice", start=0, end=8, **extra):
    body = {"user": user, "starts_at": iso(at(start)), "ends_at": iso(at(end))}
    body.update(extra)
    return body


def add_shift(user, start, end, *, actor, note=""):
    return oncall.add_oncall_shift(
        user=user,
        starts_at=at(start),
        ends_at=at(end),
        note=note,
        actor=actor,
        source=OnCallShift.Source.API,
    )


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) <= {"code", "detail", "fields"}
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def roster_events():
    return list(
        AuditEvent.objects.filter(action__startswith="oncall.")
        .order_by("seq")
        .values_list("action", "actor", "data")
    )


# Reading


def test_everyone_signed_in_reads_the_roster(api, ada, alice, bob, cora, oscar):
    shift = add_shift(alice, -2, 6, actor=ada, note="week 50")

    for user in [alice, bob, cora, oscar, ada]:
        response = api(user).get(URL)
        assert response.status_code == 200, user
        assert response.json() == [
            {
                "id": shift.pk,
                "user": "alice",
                "starts_at": "2026-12-07T08:00:00Z",
                "ends_at": "2026-12-07T16:00:00Z",
                "note": "week 50",
                "source": "api",
                "created_at": "2026-12-07T10:00:00Z",
            }
        ]
        assert api(user).get(f"{URL}{shift.pk}/").json()["user"] == "alice"

    assert_error(api().get(URL), 401, "not_authenticated")
    assert_error(api().get(f"{URL}{shift.pk}/"), 401, "not_authenticated")


def test_default_list_is_the_shifts_not_yet_ended(api, ada, alice, bob):
    add_shift(alice, -30, -20, actor=ada)  # over yesterday
    ending_now = add_shift(bob, -8, 0, actor=ada)  # ends this very moment
    current = add_shift(alice, -1, 1, actor=ada)
    upcoming = add_shift(bob, 20, 30, actor=ada)

    ids = [s["id"] for s in api(alice).get(URL).json()]

    assert ids == [current.pk, upcoming.pk]
    assert ending_now.pk not in ids


def test_at_says_who_is_on_call_then(api, ada, alice, bob, carol):
    add_shift(alice, -2, 6, actor=ada)  # 08:00 to 16:00
    add_shift(bob, 6, 14, actor=ada)  # 16:00 to 24:00
    add_shift(carol, -50, -40, actor=ada)  # two days ago

    def on_call(moment, **extra):
        response = api(alice).get(URL, {"at": iso(moment), **extra})
        assert response.status_code == 200, response.content
        return [s["user"] for s in response.json()]

    assert on_call(at(-2, -1)) == []
    assert on_call(at(-2)) == ["alice"]
    assert on_call(at(6, -1)) == ["alice"]
    assert on_call(at(6)) == ["bob"]
    assert on_call(at(-45)) == ["carol"]
    assert on_call(at(3), user="bob") == []
    assert on_call(at(3), user="alice") == ["alice"]
    # The same moment written with another offset.
    assert on_call(at(6).astimezone(timezone(timedelta(hours=9)))) == ["bob"]


@pytest.mark.parametrize(
    "query",
    [
        {"at": "2026-12-07T10:00:00"},  # no offset
        {"at": "tomorrow"},
        {"limit": "0"},
        {"user": "x" * 151},
        {"username": "alice"},
    ],
)
def test_bad_filters_are_400(api, alice, query):
    body = assert_error(api(alice).get(URL, query), 400, "invalid")
    assert set(body["fields"]) == set(query)


# Changing


def test_admin_adds_a_shift_and_it_is_in_the_trail_and_alerted(
    api, ada, alice, settings
):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]

    response = api(ada).post(
        URL, shift_body(start=-2, end=6, note="  primary  "), format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    shift = OnCallShift.objects.get()
    assert body["id"] == shift.pk
    assert (body["user"], body["note"], body["source"]) == ("alice", "primary", "api")
    assert (shift.user, shift.starts_at, shift.ends_at) == (alice, at(-2), at(6))
    assert roster_events() == [
        (
            "oncall.added",
            "ada",
            {
                "shift": shift.pk,
                "user": "alice",
                "starts_at": "2026-12-07T08:00:00Z",
                "ends_at": "2026-12-07T16:00:00Z",
                "note": "primary",
                "source": "api",
            },
        )
    ]
    event = AuditEvent.objects.get(action="oncall.added")
    assert (event.request_id, event.target, event.requester) == (None, "", "")
    alert = Alert.objects.get(event=event)
    assert (alert.channel, alert.destination) == ("email", "security@example.com")


def test_a_shift_given_in_another_offset_is_kept_in_utc(api, ada, alice):
    response = api(ada).post(
        URL,
        {
            "user": "alice",
            "starts_at": "2026-12-07T09:00:00+01:00",
            "ends_at": "2026-12-07T18:00:00+01:00",
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["starts_at"] == "2026-12-07T08:00:00Z"
    assert OnCallShift.objects.get().ends_at == at(7)


def test_admin_removes_a_shift_and_it_is_in_the_trail(api, ada, alice):
    shift = add_shift(alice, -2, 6, actor=ada, note="swap")

    response = api(ada).delete(f"{URL}{shift.pk}/")

    assert response.status_code == 204
    assert not OnCallShift.objects.exists()
    action, actor, data = roster_events()[-1]
    assert (action, actor) == ("oncall.removed", "ada")
    assert data == {
        "shift": shift.pk,
        "user": "alice",
        "starts_at": "2026-12-07T08:00:00Z",
        "ends_at": "2026-12-07T16:00:00Z",
        "note": "swap",
        "source": "api",
    }

    assert_error(api(ada).delete(f"{URL}{shift.pk}/"), 404, "not_found")
    assert_error(api(ada).delete(f"{URL}{2**70}/"), 404, "not_found")
    assert_error(api(ada).get(f"{URL}{shift.pk}/"), 404, "not_found")
    assert [a for a, _, _ in roster_events()] == ["oncall.added", "oncall.removed"]


def test_only_admins_change_the_roster(api, ada, alice, bob, cora, oscar):
    shift = add_shift(alice, -2, 6, actor=ada)
    before = AuditEvent.objects.count()

    for user in [alice, bob, cora, oscar]:
        response = api(user).post(URL, shift_body(user=user.username, start=20, end=30))
        assert_error(response, 403, "not_allowed")
        assert_error(api(user).delete(f"{URL}{shift.pk}/"), 403, "not_allowed")
        # Refused before the body is read: garbage gets the same answer.
        assert_error(
            api(user).post(URL, {"user": []}, format="json"), 403, "not_allowed"
        )

    assert_error(api().post(URL, shift_body()), 401, "not_authenticated")
    assert_error(api().delete(f"{URL}{shift.pk}/"), 401, "not_authenticated")
    assert list(OnCallShift.objects.values_list("pk", flat=True)) == [shift.pk]
    assert AuditEvent.objects.count() == before


def test_the_services_refuse_non_admins_too(ada, alice, bob):
    shift = add_shift(alice, -2, 6, actor=ada)

    with pytest.raises(NotAllowed):
        add_shift(alice, 10, 12, actor=bob)
    with pytest.raises(NotAllowed):
        oncall.remove_oncall_shift(shift.pk, actor=alice)
    assert OnCallShift.objects.count() == 1


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"user": None}, "user"),
        ({"user": "alice"}, "user"),
        ({"starts_at": datetime(2026, 12, 7, 8)}, "starts_at"),
        ({"ends_at": "2026-12-07T16:00:00Z"}, "ends_at"),
        ({"note": ["x"]}, "note"),
        ({"source": "spreadsheet"}, None),
    ],
)
def test_the_service_refuses_malformed_shifts(ada, alice, changes, field):
    values = {
        "user": alice,
        "starts_at": at(-2),
        "ends_at": at(6),
        "note": "",
        "actor": ada,
        "source": OnCallShift.Source.API,
    }
    values.update(changes)

    with pytest.raises(InvalidInput) as refused:
        oncall.add_oncall_shift(**values)

    assert field in (refused.value.fields or {None: None})
    assert not OnCallShift.objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        (shift_body(user="nobody"), "user"),
        (shift_body(user=["alice"]), "user"),
        (shift_body(user={"name": "alice"}), "user"),
        ({**shift_body(), "starts_at": "2026-12-07T08:00:00"}, "starts_at"),
        ({**shift_body(), "ends_at": "next week"}, "ends_at"),
        ({**shift_body(), "starts_at": 1765094400}, "starts_at"),
        ({**shift_body(), "ends_at": None}, "ends_at"),
        (shift_body(start=4, end=4), "ends_at"),
        (shift_body(start=4, end=2), "ends_at"),
        (shift_body(note="x" * 201), "note"),
        (shift_body(note=["x"]), "note"),
        ({"user": "alice"}, "starts_at"),
        ({**shift_body(), "starts_at": "0001-01-01T00:00:00+01:00"}, "starts_at"),
    ],
)
def test_bad_shifts_are_400_and_change_nothing(api, ada, alice, body, field):
    response = api(ada).post(URL, body, format="json")

    body = assert_error(response, 400, "invalid")
    assert field in body["fields"]
    assert not OnCallShift.objects.exists()
    assert not AuditEvent.objects.exists()


def test_a_body_that_is_not_json_is_400(api, ada):
    response = api(ada).post(URL, "{not json", content_type="application/json")
    assert_error(response, 400, "invalid")
    assert_error(api(ada).post(URL, ["alice"], format="json"), 400, "invalid")
    assert not OnCallShift.objects.exists()


def test_overlapping_shifts_of_one_person_are_refused(api, ada, alice, bob):
    first = add_shift(alice, -2, 6, actor=ada)  # 08:00 to 16:00

    for start, end in [(5, 10), (-4, -1), (0, 2), (-3, 7)]:
        response = api(ada).post(URL, shift_body(start=start, end=end), format="json")
        body = assert_error(response, 400, "invalid")
        assert "alice is already on call" in body["detail"]
        assert f"Overlaps shift {first.pk}" in body["fields"]["starts_at"][0]

    # Touching is not overlapping, and another person may be on call at once.
    assert api(ada).post(URL, shift_body(start=6, end=10)).status_code == 201
    assert api(ada).post(URL, shift_body(start=-4, end=-2)).status_code == 201
    assert api(ada).post(URL, shift_body(user="bob", start=0, end=2)).status_code == 201
    assert [a for a, _, _ in roster_events()].count("oncall.added") == 4


@pytest.mark.django_db(transaction=True)
def test_two_admins_adding_overlapping_shifts_at_once_keep_one():
    ada = make_user("ada", "admin")
    alice = make_user("alice", "requester")
    barrier = threading.Barrier(2)
    outcomes = []

    def add(start):
        try:
            barrier.wait()
            add_shift(alice, start, start + 4, actor=ada)
            outcomes.append("added")
        except InvalidInput:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=add, args=(h,)) for h in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["added", "refused"]
    assert OnCallShift.objects.filter(user=alice).count() == 1
    assert AuditEvent.objects.filter(action="oncall.added").count() == 1


# The roster in the decision


@pytest.fixture
def bastion(db, tmp_path, monkeypatch):
    make_ssh_ca(tmp_path, monkeypatch)
    target = make_ssh_target()
    Policy.objects.filter(target=target).update(
        rules=[
            {
                "name": "requester not on call",
                "when": {"on_call": False},
                "add_approvals": 2,
            }
        ]
    )
    return target


def test_a_shift_added_through_the_api_changes_the_decision(
    api, ada, alice, bob, carol, bastion
):
    before = open_request(alice)
    response = api(ada).post(URL, shift_body(start=-1, end=1), format="json")
    assert response.status_code == 201
    after = open_request(alice, incident="INC-2")

    assert before.approvals_required == 4
    assert (
        before.decision["summary"] == "4 approvals: production, requester not on call"
    )
    assert after.approvals_required == 2
    assert after.decision["summary"] == "2 approvals: production"
    assert (
        before.decision["evaluated"]["on_call"],
        after.decision["evaluated"]["on_call"],
    ) == (False, True)


def test_a_request_shows_its_decision(api, alice, bob, carol, bastion):
    created = open_request(alice)

    body = api(bob).get(f"/api/v1/requests/{created.pk}/").json()

    assert body["approvals_required"] == 4
    assert body["policy_rule"].startswith("4 approvals: production")
    decision = body["decision"]
    assert decision["summary"] == "4 approvals: production, requester not on call"
    assert decision["fired"] == ["requester not on call"]
    assert decision["approver_groups"] == ["sre-leads"]
    assert decision["max_duration_minutes"] == 60
    assert decision["evaluated"] == {
        "environment": "production",
        "scope": "read",
        "timezone": "UTC",
        "local_time": "2026-12-07T10:00+00:00",
        "off_hours": False,
        "on_call": False,
        "recent_grants": 0,
        "recent_window_days": 30,
        "open_requests": 0,
    }
    listed = api(alice).get("/api/v1/requests/").json()
    assert listed[0]["decision"] == decision


def test_the_openapi_document_lists_the_roster_and_the_decision(api, alice):
    schema = api(alice).get("/api/v1/schema/", {"format": "json"}).json()

    paths = schema["paths"]
    assert set(paths["/api/v1/oncall/"]) >= {"get", "post"}
    assert set(paths["/api/v1/oncall/{id}/"]) >= {"get", "delete"}
    listed = {p["name"] for p in paths["/api/v1/oncall/"]["get"]["parameters"]}
    assert {"user", "at"} <= listed
    created = paths["/api/v1/oncall/"]["post"]["requestBody"]["content"]
    fields = schema["components"]["schemas"]["OnCallShiftCreate"]
    assert "application/json" in created
    assert set(fields["properties"]) == {"user", "starts_at", "ends_at", "note"}
    request = schema["components"]["schemas"]["Request"]["properties"]
    assert request["decision"]["allOf"] == [{"$ref": "#/components/schemas/Decision"}]
    decision = schema["components"]["schemas"]["Decision"]["properties"]
    assert {"summary", "evaluated", "fired", "approver_groups"} <= set(decision)
