"""Server-rendered pages: thin views over the services and selectors.

Every refusal from a service (a BreakglassError) is shown on the page it came
from, with the error's HTTP status.
"""

import csv
import re
import shlex
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from psycopg.conninfo import make_conninfo
from rest_framework.renderers import JSONRenderer

from . import (
    audit,
    charts,
    clock,
    explain,
    export,
    oncall,
    policy,
    report,
    roles,
    selectors,
    services,
)
from .api.serializers import ComplianceReportSerializer
from .errors import BreakglassError, NotAllowed, NotVisible, Throttled
from .forms import (
    EndForm,
    ReportExportForm,
    ReportFilterForm,
    RequestForm,
    RequestSearchForm,
    ReviewForm,
    SendBackForm,
    SignOffForm,
    TrailExportForm,
    TrailFilterForm,
    VoteForm,
)
from .models import AccessRequest, Review, Scope, Target

Status = AccessRequest.Status

TRAIL_PAGE_SIZE = 100
HISTORY_PAGE_SIZE = 50
HOME_LIST_SIZE = 50
REVIEW_LIST_SIZE = 500
ROSTER_SIZE = 500
ROSTER_SOURCES = {"config": "configuration file", "api": "API", "admin": "admin"}


def visible_request(request_id, user):
    """Return the request if the user may see it; a 404 otherwise."""
    try:
        return selectors.get_visible_request(request_id, user)
    except NotVisible:
        raise Http404("No such request, or you may not see it.") from None


LIVE_STATUSES = {Status.PENDING, Status.APPROVED, Status.ACTIVE}


def _live_context(user, access_request):
    """Return what the live part of a request's page shows: its state and grant."""
    grant = getattr(access_request, "grant", None)
    approvals = list(access_request.approvals.all())
    is_requester = access_request.requester_id == user.pk
    is_active = access_request.status == Status.ACTIVE
    return {
        "access_request": access_request,
        "grant": grant,
        "approvals": approvals,
        "approvals_received": sum(a.decision == a.Decision.APPROVED for a in approvals),
        "is_requester": is_requester,
        "revocation": selectors.revocation_of(access_request),
        # Poll while the request may still change without the viewer doing anything.
        "is_live": access_request.status in LIVE_STATUSES,
        "shown": _live_state(access_request, grant, approvals),
        "extend_query": urlencode(
            {
                "target": access_request.target.name,
                "scope": access_request.scope.name,
                "incident": access_request.incident,
                "reason": f"Extension of request {access_request.pk}: "
                f"{access_request.reason}"[: RequestForm.REASON_MAX_LENGTH],
            }
        ),
        "can_end": is_active
        and grant is not None
        and grant.end_requested_at is None
        and services.can_end(user, access_request),
        "can_cancel": access_request.status == Status.PENDING and is_requester,
        "can_reveal": is_active
        and is_requester
        and grant is not None
        and grant.revealed_at is None,
        "can_extend": is_active
        and is_requester
        and roles.has_role(user, roles.REQUESTER),
        "end_form": EndForm(),
    }


def _live_state(access_request, grant, approvals):
    """Return a short digest of what the live part shows, to skip unchanged polls."""
    return ":".join(
        str(part)
        for part in (
            access_request.status,
            len(approvals),
            bool(grant and grant.end_requested_at),
            bool(grant and grant.revealed_at),
        )
    )


def render_detail(request, access_request, *, status=200, error=None, **forms):
    """Render a request's page with the actions open to the viewer.

    `forms` replaces the page's empty forms by bound ones, to show their errors.
    """
    user = request.user
    context = _live_context(user, access_request)
    review = getattr(access_request, "review", None)
    approvals = context["approvals"]
    is_requester = context["is_requester"]
    is_pending = access_request.status == Status.PENDING
    voted = any(a.approver_id == user.pk for a in approvals)
    show_trail = is_requester or selectors.can_read_trail(user)
    context.update(
        {
            "approver_groups": [g.name for g in access_request.approver_groups.all()],
            "decision": explain.describe_decision(access_request.decision),
            "previous_use": selectors.previous_use(access_request, user),
            "on_call_now": policy.is_on_call(access_request.requester, clock.now()),
            "voted": voted,
            "can_vote": is_pending
            and not voted
            and policy.is_eligible_approver(user, access_request),
            "review": review,
            "review_overdue": review is not None and review.is_overdue(clock.now()),
            "can_submit_review": review is not None
            and is_requester
            and review.is_waiting_on_requester,
            "can_decide_review": review is not None
            and review.status == Review.Status.SUBMITTED
            and services.can_review(user, access_request),
            "events": selectors.events(request=access_request.pk)
            if show_trail
            else None,
            "error": error,
            "vote_form": VoteForm(),
            "review_form": ReviewForm(),
            "sign_off_form": SignOffForm(),
            "send_back_form": SendBackForm(),
        }
    )
    context.update((name, form) for name, form in forms.items() if form is not None)
    return render(request, "breakglass/request_detail.html", context, status=status)


def render_refusal(request, request_id, exc, **forms):
    """Show a service's refusal on the request's page, with the refusal's status."""
    response = render_detail(
        request,
        visible_request(request_id, request.user),
        status=exc.status,
        error=exc.detail,
        **forms,
    )
    if isinstance(exc, Throttled):
        response["Retry-After"] = str(exc.retry_after)
    return response


# Home


@login_required
@require_GET
def home(request):
    user = request.user
    visible = selectors.visible_requests(user)
    others = []
    if roles.has_role(user, roles.APPROVER) or selectors.can_read_trail(user):
        others = visible.exclude(requester=user)[:HOME_LIST_SIZE]
    now = clock.now()
    reviews_to_decide = 0
    if selectors.can_review_all(user):
        reviews_to_decide = (
            selectors.reviews_waiting_for(user, now)
            .filter(status=Review.Status.SUBMITTED)
            .count()
        )
    context = {
        "my_requests": visible.filter(requester=user)[:HOME_LIST_SIZE],
        "reviews_due": selectors.reviews_due_from(user, now)[:HOME_LIST_SIZE],
        "reviews_to_decide": reviews_to_decide,
        "awaiting": selectors.awaiting_decision(user),
        "other_requests": others,
        "is_requester": roles.has_role(user, roles.REQUESTER),
        "can_read_trail": selectors.can_read_trail(user),
    }
    context["is_approver"] = roles.has_role(user, roles.APPROVER)
    context["shown"] = ",".join(str(r.pk) for r in context["awaiting"])
    return render(request, "breakglass/home.html", context)


@login_required
@require_GET
@never_cache
def awaiting(request):
    """Return the list of requests waiting for the viewer's decision, to poll."""
    waiting = selectors.awaiting_decision(request.user)
    shown = ",".join(str(r.pk) for r in waiting)
    if request.GET.get("shown") == shown:
        return HttpResponse(status=204)
    context = {"awaiting": waiting, "shown": shown}
    return render(request, "breakglass/_awaiting.html", context)


# Requesting


def _targets_for(user):
    """Return (targets the user may ask for, targets refused with the reason).

    Each target carries its policy in plain words and what it would ask of this
    user now.
    """
    targets = (
        Target.objects.filter(is_active=True, policy__isnull=False)
        .select_related("policy")
        .prefetch_related(
            "policy__approver_groups",
            Prefetch(
                "scopes",
                queryset=Scope.objects.filter(is_active=True).prefetch_related(
                    "approver_groups"
                ),
                to_attr="active_scopes",
            ),
        )
    )
    offered, refused = [], []
    for target in targets:
        if not target.active_scopes:
            continue
        try:
            # Scopes may have their own approvers and rules: decide for each.
            for scope in target.active_scopes:
                scope.rule = policy.decide(target, scope, user).rule
        except (NotAllowed, Throttled) as exc:
            target.refusal = exc.detail
            refused.append(target)
            continue
        target.rule = target.active_scopes[0].rule
        _explain_policy(target)
        offered.append(target)
    return offered, refused


def _explain_policy(target):
    base = target.policy
    groups = sorted(g.name for g in base.approver_groups.all())
    target.policy_lines = explain.describe_policy(base, groups)
    target.rule_lines = [
        explain.describe_rule(rule, base.recent_window_days)
        for rule in base.rules or []
    ]
    for scope in target.active_scopes:
        scope.approvers = sorted(g.name for g in scope.approver_groups.all())


def _show_errors(form, exc):
    for field, problems in (exc.fields or {}).items():
        form.add_error(field if field in form.fields else None, problems)
    if not exc.fields:
        form.add_error(None, exc.detail)


@login_required
@require_http_methods(["GET", "POST"])
def new_request(request):
    if not roles.has_role(request.user, roles.REQUESTER):
        raise PermissionDenied(
            "Only people with the requester role can ask for access."
        )
    offered, refused = _targets_for(request.user)
    form = RequestForm(
        request.POST or None, targets=offered, initial=_prefill(request.GET)
    )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                created = services.create_request(
                    requester=request.user, **form.cleaned_data
                )
            except BreakglassError as exc:
                _show_errors(form, exc)
                status = exc.status
            else:
                messages.success(
                    request,
                    f"Request {created.pk} is open and waits for "
                    f"{created.approvals_required} approval(s).",
                )
                return redirect("request-detail", created.pk)
    context = {"form": form, "targets": offered, "refused_targets": refused}
    return render(request, "breakglass/request_new.html", context, status=status)


PREFILLED = ("target", "scope", "duration_minutes", "incident", "reason")


def _prefill(query):
    """Return the form's first values from the address, as an extension link sets."""
    initial = {name: query[name] for name in PREFILLED if query.get(name)}
    if "target" in initial and "scope" in initial:
        initial["scope"] = f"{initial['target']}:{initial['scope']}"
    return initial


@login_required
@require_GET
@never_cache
def request_preview(request):
    """Return what the chosen target and scope would need, as a page fragment."""
    target_name = request.GET.get("target", "")
    scope_value = request.GET.get("scope", "")
    scope_target, _, scope_name = scope_value.rpartition(":")
    context = {"chosen": bool(target_name and scope_name)}
    if context["chosen"] and scope_target in ("", target_name):
        try:
            target, scope, decision = selectors.preview_decision(
                request.user, target_name, scope_name
            )
        except NotVisible:
            context["refusal"] = "This target or scope is not offered."
        except BreakglassError as exc:
            context["refusal"] = exc.detail
        else:
            context.update(
                target=target,
                scope=scope,
                decision=explain.describe_decision(decision.as_record()),
            )
    else:
        context["chosen"] = False
    return render(request, "breakglass/_decision_preview.html", context)


# Targets


@login_required
@require_GET
def target_detail(request, name):
    try:
        target = selectors.target_page(name)
    except NotVisible:
        raise Http404 from None
    return render(request, "breakglass/target.html", {"target": target})


# One request


@login_required
@require_GET
def request_detail(request, pk):
    return render_detail(request, visible_request(pk, request.user))


@login_required
@require_GET
@never_cache
def request_live(request, pk):
    """Return the live part of a request's page: its state, votes and grant."""
    access_request = visible_request(pk, request.user)
    context = _live_context(request.user, access_request)
    if request.GET.get("shown") == context["shown"]:
        # Nothing changed: leave the page, and what the viewer is typing, alone.
        return HttpResponse(status=204)
    return render(request, "breakglass/_request_live.html", context)


@login_required
@require_POST
def cancel(request, pk):
    visible_request(pk, request.user)
    try:
        services.cancel_request(pk, actor=request.user)
    except BreakglassError as exc:
        return render_refusal(request, pk, exc)
    messages.success(request, "The request is cancelled.")
    return redirect("request-detail", pk)


@login_required
@require_POST
def end(request, pk):
    access_request = visible_request(pk, request.user)
    form = EndForm(request.POST)
    if not form.is_valid():
        return render_detail(request, access_request, status=400, end_form=form)
    try:
        services.request_end(pk, actor=request.user, reason=form.cleaned_data["reason"])
    except BreakglassError as exc:
        return render_refusal(request, pk, exc, end_form=form)
    revocation = selectors.revocation_of(access_request)
    if revocation["supported"]:
        messages.success(
            request, "The grant is being revoked; this takes a few seconds."
        )
    else:
        messages.warning(request, f"The end is recorded. {revocation['note']}")
    return redirect("request-detail", pk)


@login_required
@require_POST
@never_cache
@sensitive_variables("credential")
def reveal(request, pk):
    access_request = visible_request(pk, request.user)
    try:
        credential = services.reveal_credential(pk, actor=request.user)
    except BreakglassError as exc:
        return render_refusal(request, pk, exc)
    context = {
        "access_request": access_request,
        "credential": credential,
        "help": connection_help(credential, access_request),
    }
    return render(request, "breakglass/credential.html", context)


@sensitive_variables("credential")
def connection_help(credential, access_request):
    """Return the commands that use the credential, ready to paste."""
    kind = credential.get("kind")
    username = credential.get("username", "")
    if kind == Target.Kind.POSTGRES:
        conninfo = make_conninfo(
            host=credential["host"],
            port=str(credential["port"]),
            dbname=credential["dbname"],
            user=username,
        )
        return {"psql": f"psql {_shell_quoted(conninfo)}"}
    if kind == Target.Kind.REDIS:
        return {
            "redis_cli": shlex.join(
                [
                    "redis-cli",
                    "-h",
                    credential["host"],
                    "-p",
                    str(credential["port"]),
                    "--user",
                    username,
                    "--askpass",
                ]
            )
        }
    if kind == Target.Kind.SSH:
        base = f"~/.ssh/breakglass-{access_request.pk}"
        generated = bool(credential.get("private_key"))
        # Without a generated key, the certificate goes with the requester's own.
        key = base if generated else "~/.ssh/id_ed25519"
        # The target's name stands for its address; the page says to replace it.
        host = access_request.target.name
        return {
            "key_file": base if generated else None,
            "cert_file": f"{base}-cert.pub",
            "ssh": f"ssh -i {key} -o CertificateFile={base}-cert.pub {username}@{host}",
            "host": host,
        }
    return {}


def _shell_quoted(text):
    if re.fullmatch(r"[-\w.=:/ ']+", text):
        return f'"{text}"'
    return shlex.quote(text)


# Post-incident reviews


def _show_field_errors(form, exc):
    # A refusal without fields is shown once, above the page, not on the form.
    if exc.fields:
        _show_errors(form, exc)


@login_required
@require_POST
def review_submit(request, pk):
    access_request = visible_request(pk, request.user)
    form = ReviewForm(request.POST)
    if not form.is_valid():
        return render_detail(request, access_request, status=400, review_form=form)
    try:
        services.submit_review(
            pk, actor=request.user, summary=form.cleaned_data["summary"]
        )
    except BreakglassError as exc:
        _show_field_errors(form, exc)
        return render_refusal(request, pk, exc, review_form=form)
    messages.success(request, "Your review is submitted to compliance.")
    return redirect("request-detail", pk)


@login_required
@require_POST
def review_sign_off(request, pk):
    access_request = visible_request(pk, request.user)
    form = SignOffForm(request.POST)
    if not form.is_valid():
        return render_detail(request, access_request, status=400, sign_off_form=form)
    try:
        services.sign_off_review(
            pk, actor=request.user, comment=form.cleaned_data["comment"]
        )
    except BreakglassError as exc:
        _show_field_errors(form, exc)
        return render_refusal(request, pk, exc, sign_off_form=form)
    messages.success(request, "The review is signed off.")
    return redirect("request-detail", pk)


@login_required
@require_POST
def review_send_back(request, pk):
    access_request = visible_request(pk, request.user)
    form = SendBackForm(request.POST)
    if not form.is_valid():
        return render_detail(request, access_request, status=400, send_back_form=form)
    try:
        services.send_back_review(
            pk, actor=request.user, comment=form.cleaned_data["comment"]
        )
    except BreakglassError as exc:
        _show_field_errors(form, exc)
        return render_refusal(request, pk, exc, send_back_form=form)
    messages.success(request, "The review is sent back to its requester.")
    return redirect("request-detail", pk)


@login_required
@require_GET
def reviews(request):
    user = request.user
    if not selectors.can_list_reviews(user):
        raise PermissionDenied(
            "Only requesters, compliance reviewers and admins have reviews."
        )
    now = clock.now()
    reviews_all = selectors.can_review_all(user)
    if reviews_all:
        listed = selectors.open_reviews(user, now)
    else:
        listed = selectors.reviews_due_from(user, now)
    context = {
        "reviews": listed[:REVIEW_LIST_SIZE],
        "reviews_all": reviews_all,
        "now": now,
    }
    return render(request, "breakglass/reviews.html", context)


# The on-call roster


@login_required
@require_GET
def roster(request):
    now = clock.now()
    shifts = list(oncall.shifts()[:ROSTER_SIZE])
    for shift in shifts:
        shift.is_now = shift.starts_at <= now
        shift.source_text = ROSTER_SOURCES.get(shift.source, shift.source)
    context = {"shifts": shifts, "can_edit": roles.has_role(request.user, roles.ADMIN)}
    return render(request, "breakglass/oncall.html", context)


# The trail


def _require_trail_reader(user):
    if not selectors.can_read_trail(user):
        raise PermissionDenied(
            "Only compliance reviewers and admins can read the trail."
        )


@login_required
@require_GET
def trail(request):
    _require_trail_reader(request.user)
    form = TrailFilterForm(request.GET or None)
    status = 200
    if not form.is_bound:
        events = selectors.events()
    elif form.is_valid():
        events = selectors.events(**form.query())
    else:
        events = selectors.events().none()
        status = 400
    paginator = Paginator(events.reverse(), TRAIL_PAGE_SIZE)
    if not form.is_bound:
        # Counting a long trail reads all of it; its head's seq is its length.
        paginator.count = selectors.trail_length()
    page = paginator.get_page(request.GET.get("page"))
    context = {"form": form, "page": page, "chain": audit.chain_state()}
    return render(request, "breakglass/trail.html", context, status=status)


@login_required
@require_GET
def trail_export(request):
    _require_trail_reader(request.user)
    form = TrailExportForm(request.GET)
    if not form.is_valid():
        context = {"form": form, "back": _trail_address(request.GET)}
        return render(
            request, "breakglass/trail_export_refused.html", context, status=400
        )
    return export.export_trail(
        actor=request.user,
        file_format=form.cleaned_data["format"],
        trail_filter=form.query(),
    )


def _trail_address(query):
    known = query.copy()
    for name in list(known):
        if name not in TrailFilterForm.base_fields:
            del known[name]
    return f"{reverse('trail')}?{known.urlencode()}" if known else reverse("trail")


@login_required
@require_GET
def incident(request, incident):
    _require_trail_reader(request.user)
    if "\x00" in incident:
        # No incident can hold a NUL byte, and PostgreSQL cannot compare one.
        raise Http404("No request or event names this incident.")
    requests = (
        selectors.visible_requests(request.user)
        .filter(incident=incident)
        .order_by("created_at", "pk")
    )
    events = selectors.events(incident=incident)
    if not requests and not events.exists():
        raise Http404("No request or event names this incident.")
    context = {
        "incident": incident,
        "requests": requests,
        "events": events,
        "chain": audit.chain_state(),
    }
    return render(request, "breakglass/incident.html", context)


# History


@login_required
@require_GET
def history(request):
    form = RequestSearchForm(request.GET or None)
    status = 200
    if not form.is_bound:
        found = selectors.search_requests(request.user)
    elif form.is_valid():
        found = selectors.search_requests(request.user, **form.query())
    else:
        found = AccessRequest.objects.none()
        status = 400
    page = Paginator(found, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"form": form, "page": page}
    return render(request, "breakglass/history.html", context, status=status)


# Operations


@login_required
@require_GET
def operations(request):
    if not selectors.can_see_operations(request.user):
        raise PermissionDenied(
            "Only compliance reviewers and admins can see the operations page."
        )
    now = clock.now()
    context = {
        "revocations": selectors.failing_revocations(now),
        "stuck_alerts": selectors.stuck_alerts(now),
        "now": now,
    }
    return render(request, "breakglass/operations.html", context)


# The compliance report

REPORT_TIMES = {
    "time_to_approval": "Request → approval",
    "time_to_issuance": "Approval → issuance",
    "time_to_revocation": "Due → revoked",
}


def _require_report_reader(user):
    if not report.can_see_report(user):
        raise PermissionDenied(
            "Only compliance reviewers and admins can read the compliance report."
        )


def _report_page(request, form, *, status=200):
    context = {"form": form, "status": status}
    if status == 200:
        since, until = form.report_range()
        figures = report.compliance_report(since, until)
        context.update(
            report=figures,
            chart=charts.day_bars(figures["grants_by_day"]),
            times=[
                (name, label, figures[name]) for name, label in REPORT_TIMES.items()
            ],
            range_query=urlencode({"since": since, "until": until}),
        )
    return render(request, "breakglass/report.html", context, status=status)


@login_required
@require_GET
def report_page(request):
    _require_report_reader(request.user)
    form = ReportFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        return _report_page(request, form, status=400)
    return _report_page(request, form)


@login_required
@require_GET
def report_export(request):
    _require_report_reader(request.user)
    form = ReportExportForm(request.GET)
    if not form.is_valid():
        return _report_page(request, form, status=400)
    since, until = form.report_range()
    figures = report.compliance_report(since, until)
    kind = form.cleaned_data["format"]
    if kind == "json":
        response = HttpResponse(
            JSONRenderer().render(ComplianceReportSerializer(figures).data),
            content_type="application/json",
        )
    else:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        writer = csv.writer(response)
        for n, (name, header, rows) in enumerate(report.csv_sections(figures)):
            if n:
                writer.writerow([])
            writer.writerows([[name], header, *rows])
    filename = f"breakglass-report-{since}-{until}.{kind}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
