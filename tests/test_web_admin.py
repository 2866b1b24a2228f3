"""The admin: targets and policies are edited there; nothing else can be changed."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import Approval
from breakglass.models import Alert, AuditEvent, Grant, Policy, Target

from .web_helpers import approve, issue, login, make_ssh_target, open_request


@pytest.fixture
def active(db, tmp_path, monkeypatch, alice, bob, carol):
    make_ssh_target(tmp_path, monkeypatch)
    access_request = open_request(alice)
    approve(access_request, bob, carol)
    issue(access_request)
    return access_request


def test_admin_cannot_add_change_or_delete_trail_or_approvals(active, ada):
    client = login(ada)
    event = AuditEvent.objects.first()
    approval = Approval.objects.first()
    before = list(AuditEvent.objects.values_list("seq", "hash"))

    for model, row in [
        ("breakglass/auditevent", event),
        ("approvals/approval", approval),
    ]:
        assert client.get(f"/admin/{model}/").status_code == 200
        assert client.get(f"/admin/{model}/add/").status_code == 403
        assert client.post(f"/admin/{model}/add/", {}).status_code == 403
        change = client.get(f"/admin/{model}/{row.pk}/change/")
        assert change.status_code == 200
        assert 'name="_save"' not in change.text
        response = client.post(f"/admin/{model}/{row.pk}/change/", {"actor": "x"})
        assert response.status_code == 403
        assert client.post(f"/admin/{model}/{row.pk}/delete/").status_code == 403

    assert list(AuditEvent.objects.values_list("seq", "hash")) == before
    assert Approval.objects.count() == 2


def test_admin_never_shows_the_sealed_credential(active, ada):
    grant = Grant.objects.get(request=active)
    assert grant.sealed_credential is not None

    page = login(ada).get(f"/admin/breakglass/grant/{grant.pk}/change/")

    assert page.status_code == 200
    assert grant.principal in page.text
    assert "sealed" not in page.text.lower()
    assert login(ada).get("/admin/breakglass/grant/add/").status_code == 403


def target_form(**changes):
    data = {
        "name": "cache",
        "kind": "redis",
        "environment": "production",
        "connection_env": "CACHE_URL",
        "ca_key_env": "",
        "is_active": "on",
        "scopes-TOTAL_FORMS": "1",
        "scopes-INITIAL_FORMS": "0",
        "scopes-MIN_NUM_FORMS": "1",
        "scopes-MAX_NUM_FORMS": "1000",
        "scopes-0-name": "read",
        "scopes-0-grants": '["+@read", "~*"]',
        "scopes-0-is_active": "on",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "0",
        "policy-MIN_NUM_FORMS": "1",
        "policy-MAX_NUM_FORMS": "1",
        "policy-0-approvals_required": "2",
        "policy-0-max_duration_minutes": "30",
        "policy-0-approval_window_minutes": "15",
        "policy-0-incident_pattern": "^INC-[0-9]+$",
        "policy-0-timezone": "UTC",
        "policy-0-working_days": ["mon", "tue", "wed", "thu", "fri"],
        "policy-0-working_hours_start": "09:00",
        "policy-0-working_hours_end": "18:00",
        "policy-0-max_active_grants": "",
        "policy-0-recent_window_days": "30",
        "policy-0-rules": "[]",
    }
    data.update(changes)
    return data


def test_admin_creates_a_target_and_records_it(ada):
    response = login(ada).post("/admin/breakglass/target/add/", target_form())

    assert response.status_code == 302
    target = Target.objects.get(name="cache")
    assert target.scopes.get().grants == ["+@read", "~*"]
    assert target.policy.max_duration_minutes == 30
    event = AuditEvent.objects.get(action="config.applied")
    assert (event.actor, event.data) == (
        "ada",
        {"source": "admin", "targets": ["cache"]},
    )


def test_admin_names_a_targets_alert_channels(ada):
    form = target_form(
        slack_webhook_env="CACHE_SLACK_URL", pagerduty_routing_key_env="CACHE_PD_KEY"
    )

    response = login(ada).post("/admin/breakglass/target/add/", form)

    assert response.status_code == 302
    target = Target.objects.get(name="cache")
    assert target.slack_webhook_env == "CACHE_SLACK_URL"
    assert target.pagerduty_routing_key_env == "CACHE_PD_KEY"


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"policy-0-incident_pattern": "^INC-(["}, "Not a valid regular expression"),
        ({"scopes-0-grants": "[]"}, "Give a non-empty list"),
        ({"connection_env": ""}, "Required for a redis target."),
        ({"kind": "ssh", "connection_env": ""}, "Required for an SSH target."),
        ({"kind": "sealed"}, "is required for a sealed target"),
        (
            {"kind": "sealed", "rotator": '{"kind": "command"}'},
            "is required for a command rotator",
        ),
        ({"rotator": '{"kind": "redis"}'}, "is only for a sealed target"),
        (
            {"slack_webhook_env": "https://hooks.slack.com/services/T/B/x"},
            "Must be the name of an environment variable.",
        ),
    ],
)
def test_admin_refuses_a_bad_target(ada, changes, problem):
    response = login(ada).post("/admin/breakglass/target/add/", target_form(**changes))

    assert response.status_code == 200
    assert problem in response.text
    assert not Target.objects.exists()
    assert not Policy.objects.exists()
    assert not AuditEvent.objects.exists()


def test_admin_is_closed_to_non_staff(active, bob, cora):
    for user in [bob, cora]:
        response = login(user).get("/admin/breakglass/auditevent/")
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_the_admin_asks_for_a_second_factor(ada):
    client = Client()
    client.force_login(ada)

    page = client.get("/admin/breakglass/target/")

    assert page.status_code == 302
    assert page["Location"].startswith("/admin/login/")


def test_nobody_can_add_or_edit_an_authenticator_in_the_admin(ada, bob):
    device = TOTPDevice.objects.get(user=bob)
    client = login(ada)

    assert client.get("/admin/otp_totp/totpdevice/add/").status_code == 403
    page = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/")
    assert page.status_code == 200
    assert device.key not in page.text
    response = client.post(
        f"/admin/otp_totp/totpdevice/{device.pk}/change/",
        {"user": bob.pk, "name": "ada-made", "key": "00" * 20, "confirmed": "on"},
    )
    assert response.status_code == 403
    device.refresh_from_db()
    assert device.name == "phone"


def _user_form(user, **changes):
    form = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": user.email,
        "is_active": "on",
        "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [],
        "date_joined_0": "2026-12-01",
        "date_joined_1": "08:00:00",
        "initial-date_joined_0": "2026-12-01",
        "initial-date_joined_1": "08:00:00",
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v is not None}


def test_admin_changes_to_who_may_approve_are_in_the_trail(settings, ada, alice):
    settings.BREAKGLASS_ALERT_EMAILS = ["security@example.com"]
    approvers = Group.objects.get_or_create(name="sre-leads")[0]

    response = login(ada).post(
        f"/admin/auth/user/{alice.pk}/change/",
        _user_form(
            alice,
            groups=[*alice.groups.values_list("pk", flat=True), approvers.pk],
            is_superuser="on",
        ),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.get(action="user.changed")
    assert event.actor == "ada"
    assert event.data == {
        "user": "alice",
        "groups_added": ["sre-leads"],
        "is_superuser": True,
    }
    alert = Alert.objects.get(event=event)
    assert alert.destination == "security@example.com"


def test_an_admin_save_that_changes_no_access_records_nothing(ada, alice):
    response = login(ada).post(
        f"/admin/auth/user/{alice.pk}/change/",
        _user_form(alice, first_name="Alice"),
    )

    assert response.status_code == 302
    assert not AuditEvent.objects.filter(action__startswith="user.").exists()
