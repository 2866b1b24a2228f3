"""Each person's main journey in a real browser: headless Chromium, a live server and
a real Celery worker signing SSH certificates.

Alice asks for the bastion at her desk and watches her request's page, which she
never reloads; Bob and Carol approve on phones with codes from their authenticators;
Alice reveals the certificate, ends the access early and writes her review; Cora
signs it off, reads the trail and the report, and downloads both.

Playwright's sync API runs an asyncio loop in this thread while it is open, and
Django refuses database calls from a thread with a running loop. So the test reads
the database before the browser starts and after it stops, and the pages (served
by the live server's own thread) do everything in between. Codes come from the
devices' keys, computed the way a phone computes them.

With BREAKGLASS_SCREENSHOT_DIR set, the main pages are saved there as PNG files
(docs/screenshots/ in the README).
"""

import base64
import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright import sync_api as playwright_api
from playwright.sync_api import expect

from breakglass import roles
from breakglass.models import AccessRequest, AuditEvent

from .conftest import make_target, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("BREAKGLASS_TEST_CHROMIUM", "/usr/bin/chromium")
CA_ENV = "BG_BROWSER_BASTION_CA_KEY_FILE"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
# Issuing and revoking go through the worker; the pages follow within seconds.
WORKER_TIMEOUT_MS = 30_000
PAGE_TIMEOUT_MS = 10_000


class Authenticator:
    """The codes a person's phone shows, from their device's key, without the ORM."""

    def __init__(self, user):
        device = TOTPDevice.objects.get(user=user, confirmed=True)
        self.totp = (device.bin_key, device.step, device.t0, device.digits)

    @classmethod
    def from_secret(cls, secret):
        """Return the authenticator a person sets up by typing the secret shown."""
        authenticator = cls.__new__(cls)
        key = base64.b32decode(secret.replace(" ", ""))
        authenticator.totp = (key, 30, 0, 6)
        return authenticator

    def code(self, *, ahead=0):
        key, step, t0, digits = self.totp
        totp = TOTP(key, step, t0, digits)
        totp.time = time.time() + ahead * step
        return f"{totp.token():0{digits}d}"


@pytest.fixture
def ca_key(tmp_path):
    key = tmp_path / "bastion_ca"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f", str(key)],
        check=True,
    )
    return key


@pytest.fixture
def worker_env(ca_key):
    return {CA_ENV: str(ca_key)}


@pytest.fixture
def people(db):
    return {
        "alice": make_user("alice", roles.REQUESTER, groups=["oncall"]),
        "bob": make_user("bob", roles.APPROVER, groups=["sre-leads"], totp=True),
        "carol": make_user("carol", roles.APPROVER, groups=["sre-leads"], totp=True),
        "cora": make_user("cora", roles.COMPLIANCE),
    }


@pytest.fixture
def bastion(db, tmp_path, monkeypatch, ca_key):
    monkeypatch.setenv(CA_ENV, str(ca_key))
    target = make_target("bastion", "ssh", grants=["root"], ca_env=CA_ENV)
    target.revocation_list_path = str(tmp_path / "bastion.krl")
    target.save(update_fields=["revocation_list_path"])
    return target


@contextlib.contextmanager
def _chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM} "
            "(apt-get install chromium, or set BREAKGLASS_TEST_CHROMIUM)"
        )
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


def _screenshot(page, name, *, full_page=False):
    directory = os.environ.get("BREAKGLASS_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=full_page)


def _open(browser, base_url, *, phone=False, **options):
    context = browser.new_context(
        base_url=base_url,
        viewport=PHONE if phone else DESKTOP,
        is_mobile=phone,
        has_touch=phone,
        **options,
    )
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    return context.new_page()


def _log_in(page, username, code=""):
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"pw-{username}")
    if code:
        page.get_by_label("One-time code").fill(code)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("header .who")).to_have_text(username)


def _approve(page, request_url, code, comment, *, screenshot=None):
    page.goto(request_url)
    if screenshot:
        _screenshot(page, screenshot, full_page=True)
    otp = page.get_by_label("One-time code")
    # A phone offers its number pad and the code its authenticator just showed.
    expect(otp).to_have_attribute("inputmode", "numeric")
    expect(otp).to_have_attribute("autocomplete", "one-time-code")
    page.get_by_label("Comment").fill(comment)
    otp.fill(code)
    # Enter in the code field sends the form with its first button: Approve.
    otp.press("Enter")
    expect(page.locator(".messages")).to_contain_text("Your approval is recorded.")


@pytest.mark.worker
def test_request_approve_reveal_end_review_and_export(
    live_server, worker, bastion, people
):
    phones = {name: Authenticator(people[name]) for name in ("bob", "carol")}
    with _chromium() as browser:
        request_id = _journeys(browser, live_server.url, phones)

    # What the pages did is in the trail, in order, and the export was recorded.
    access_request = AccessRequest.objects.get(pk=request_id)
    assert access_request.status == AccessRequest.Status.REVOKED
    assert access_request.review.status == "signed_off"
    recorded = list(
        AuditEvent.objects.filter(request=request_id)
        .order_by("seq")
        .values_list("action", "actor")
    )
    for step in [
        ("request.created", "alice"),
        ("approval.approved", "bob"),
        ("approval.approved", "carol"),
        ("grant.issued", "system"),
        ("credential.revealed", "alice"),
        ("grant.revoked", "alice"),
        ("review.submitted", "alice"),
        ("review.signed_off", "cora"),
    ]:
        assert step in recorded
        recorded = recorded[recorded.index(step) + 1 :]
    assert AuditEvent.objects.filter(action="audit.exported", actor="cora").exists()


def _journeys(browser, base_url, phones):
    """Drive every person's pages; return the request's id."""
    # Bob is logged in on his phone before anything waits for him.
    bob = _open(browser, base_url, phone=True)
    _log_in(bob, "bob", phones["bob"].code())
    bob.keyboard.press("Tab")
    expect(bob.get_by_role("link", name="Skip to content")).to_be_focused()
    expect(bob.locator("#awaiting")).to_contain_text("Nothing waits for your decision")

    # Alice asks; the form says what her choice needs before she sends it.
    alice = _open(
        browser,
        base_url,
        timezone_id="America/New_York",
        permissions=["clipboard-read", "clipboard-write"],
    )
    _log_in(alice, "alice")
    alice.get_by_role("link", name="New request").first.click()
    alice.get_by_role("combobox", name="Target").select_option("bastion")
    preview = alice.locator("#decision-preview")
    expect(preview).to_contain_text("bastion / read needs 2 approvals: production")
    expect(preview.locator(".longest")).to_have_text("60 minutes")
    alice.get_by_label("Duration (minutes)").fill("15")
    alice.get_by_label("Incident reference").fill("INC-4242")
    alice.get_by_label("Reason").fill("Deploys hang on web-3; need root to restart")
    _screenshot(alice, "request-form", full_page=True)
    alice.get_by_role("button", name="Send for approval").click()
    expect(alice).to_have_url(re.compile(r"/requests/\d+/$"))
    request_url = alice.url.removeprefix(base_url)
    request_id = int(re.search(r"/requests/(\d+)/", request_url).group(1))
    live = alice.locator("#live")
    expect(live).to_contain_text("0 of 2 approvals received")
    # The request's page is never loaded again: this mark would be lost.
    alice.evaluate("window.notReloaded = true")

    # Bob's queue shows the request by itself; he decides on his phone.
    expect(bob.locator(f'#awaiting a[href="{request_url}"]').first).to_be_visible()
    bob.locator(f'#awaiting a[href="{request_url}"]').first.click()
    expect(bob.locator(".previous-use")).to_contain_text("first request by alice")
    # His login used this step's code: the phone shows the next one by now.
    _approve(
        bob,
        request_url,
        phones["bob"].code(ahead=1),
        "ok, INC-4242 is real",
        screenshot="approver-phone",
    )
    expect(live).to_contain_text("1 of 2 approvals received")
    expect(live).to_contain_text("bob approved")

    carol = _open(browser, base_url, phone=True)
    _log_in(carol, "carol", phones["carol"].code())
    _approve(carol, request_url, phones["carol"].code(ahead=1), "go")

    # The worker signs the certificate; Alice's page turns active by itself.
    expect(live).to_contain_text("Active until", timeout=WORKER_TIMEOUT_MS)
    expect(live.locator(".countdown")).to_have_text(re.compile(r"\d+ min \d+ s left"))
    assert alice.evaluate("window.notReloaded") is True
    expires = live.locator("time").first
    expect(expires).to_have_attribute("title", re.compile(r" UTC$"))
    expect(expires).to_contain_text(re.compile(r"E[SD]T"))
    _screenshot(alice, "request-active")

    # Revealed once, with a copy button and the command to paste.
    live.get_by_role("button", name="Reveal credential").click()
    expect(alice.locator("h1")).to_contain_text("Your credential for bastion / read")
    command = alice.locator("pre#ssh")
    expect(command).to_contain_text("ssh -i ~/.ssh/breakglass-")
    alice.get_by_role("button", name="Copy: Connect with ssh").click()
    pasted = alice.evaluate("navigator.clipboard.readText()")
    assert pasted == command.inner_text().strip()

    # Ending early: the page follows the revocation, then asks for the review.
    alice.goto(request_url)
    live.get_by_label("Reason").fill("fixed, restarted the deploy agent")
    live.get_by_role("button", name="End access now").click()
    expect(live).to_contain_text("Ended early", timeout=WORKER_TIMEOUT_MS)
    live.get_by_role("link", name="Record what you did with the access").click()
    alice.get_by_label("What you did with the access").fill(
        "Restarted the deploy agent on web-3; nothing else."
    )
    alice.get_by_role("button", name="Submit review").click()
    expect(alice.locator(".messages")).to_contain_text("Your review is submitted")

    # Cora signs the review off, reads the trail and the report, downloads both.
    cora = _open(browser, base_url)
    _log_in(cora, "cora")
    cora.goto(request_url)
    sign_off = cora.locator(f'form[action="{request_url}review/sign-off/"]')
    sign_off.get_by_label("Comment").fill("Matches the incident notes.")
    sign_off.get_by_role("button", name="Sign off").click()
    expect(cora.locator(".messages")).to_contain_text("The review is signed off.")

    cora.get_by_role("navigation").get_by_role("link", name="Trail").click()
    expect(cora.locator(".badge-ok")).to_contain_text("Audit chain intact")
    _screenshot(cora, "trail")
    with cora.expect_download() as download:
        cora.get_by_role("link", name="Export CSV").click()
    assert download.value.suggested_filename.endswith(".csv")
    exported = Path(download.value.path()).read_text()
    assert "request.created" in exported and "review.signed_off" in exported

    cora.get_by_role("navigation").get_by_role("link", name="Report").click()
    expect(cora.locator("figure.chart svg")).to_be_visible()
    _screenshot(cora, "report")
    with cora.expect_download() as download:
        cora.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.startswith("breakglass-report-")

    # Without JavaScript the request's page still reads in full.
    reader = _open(browser, base_url, java_script_enabled=False)
    _log_in(reader, "cora")
    reader.goto(request_url)
    expect(reader.locator("#live")).to_contain_text("Ended early")
    expect(reader.locator("#approvals-h + .table-wrap")).to_contain_text("carol")
    return request_id


def test_an_approver_enrols_a_phone_and_logs_in_with_it(live_server, db):
    make_user("dora", roles.APPROVER, groups=["sre-leads"])

    with _chromium() as browser:
        page = _open(browser, live_server.url, phone=True)
        _log_in(page, "dora")
        page.get_by_role("navigation").get_by_role("link", name="Authenticator").click()
        page.get_by_label("Name").fill("work phone")
        page.get_by_label("Your password").fill("pw-dora")
        page.get_by_role("button", name="Continue").click()
        expect(
            page.get_by_role("img", name="QR code for your authenticator app")
        ).to_be_visible()
        _screenshot(page, "otp-enrol", full_page=True)
        phone = Authenticator.from_secret(page.locator("#totp-secret").inner_text())
        code = page.get_by_label("Code shown by the app")
        expect(code).to_have_attribute("autocomplete", "one-time-code")
        code.fill(phone.code())
        page.get_by_role("button", name="Confirm").click()
        expect(page.locator(".messages")).to_contain_text(
            "Authenticator work phone is ready"
        )

        # From now on a password alone does not open a session.
        page.get_by_role("button", name="Log out").click()
        page.goto("/login/")
        page.get_by_label("Username").fill("dora")
        page.get_by_label("Password").fill("pw-dora")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#id_otp_error")).to_contain_text(
            "Enter the 6-digit code from your authenticator app."
        )
        expect(page.get_by_label("One-time code")).to_have_attribute(
            "aria-invalid", "true"
        )
        _log_in(page, "dora", phone.code(ahead=1))

    assert TOTPDevice.objects.get(user__username="dora").name == "work phone"
