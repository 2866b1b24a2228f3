"""REST API, version 1 (CONTRACT.md, section 4): one view per operation."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals import services as approval_services

from .. import audit, clock, export, oncall, report, roles, selectors, services
from ..errors import NotAllowed, NotVisible
from ..models import OnCallShift
from .serializers import (
    AuditExportQuerySerializer,
    AuditQuerySerializer,
    ComplianceReportQuerySerializer,
    ComplianceReportSerializer,
    CredentialSerializer,
    EventSerializer,
    FailingRevocationsSerializer,
    OnCallQuerySerializer,
    OnCallShiftCreateSerializer,
    OnCallShiftSerializer,
    RequestCreateSerializer,
    RequestQuerySerializer,
    RequestSerializer,
    ReviewListItemSerializer,
    ReviewQuerySerializer,
    ReviewSendBackSerializer,
    ReviewSignOffSerializer,
    ReviewSubmitSerializer,
    RevokeSerializer,
    VerifySerializer,
    VoteSerializer,
)

ERROR = OpenApiResponse(description='{"code": ..., "detail": ...}')


def _valid(serializer_class, data):
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _request_response(request_id, user, status_code=status.HTTP_200_OK):
    found = selectors.get_visible_request(request_id, user)
    return Response(RequestSerializer(found).data, status=status_code)


class RequestListView(APIView):
    @extend_schema(
        parameters=[RequestQuerySerializer],
        responses={200: RequestSerializer(many=True), 400: ERROR},
    )
    def get(self, request):
        query = _valid(RequestQuerySerializer, request.query_params)
        offset = query.pop("offset", 0)
        limit = query.pop("limit", 200)
        found = selectors.search_requests(request.user, **query)
        found = found[offset : offset + limit]
        return Response(RequestSerializer(found, many=True).data)

    @extend_schema(
        request=RequestCreateSerializer,
        responses={201: RequestSerializer, 400: ERROR, 403: ERROR},
    )
    def post(self, request):
        data = _valid(RequestCreateSerializer, request.data)
        created = services.create_request(requester=request.user, **data)
        return _request_response(created.pk, request.user, status.HTTP_201_CREATED)


class RequestDetailView(APIView):
    @extend_schema(responses={200: RequestSerializer, 404: ERROR})
    def get(self, request, pk):
        return _request_response(pk, request.user)


class ApproveView(APIView):
    @extend_schema(
        request=VoteSerializer,
        responses={200: RequestSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        data = _valid(VoteSerializer, request.data)
        approval_services.approve_request(
            pk,
            approver=request.user,
            code=data["otp"],
            comment=data["comment"],
            device=data["device"] or None,
        )
        return _request_response(pk, request.user)


class DenyView(APIView):
    @extend_schema(
        request=VoteSerializer,
        responses={200: RequestSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        data = _valid(VoteSerializer, request.data)
        approval_services.deny_request(
            pk,
            approver=request.user,
            code=data["otp"],
            comment=data["comment"],
            device=data["device"] or None,
        )
        return _request_response(pk, request.user)


class CancelView(APIView):
    @extend_schema(
        request=None,
        responses={200: RequestSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        services.cancel_request(pk, actor=request.user)
        return _request_response(pk, request.user)


class RevokeView(APIView):
    @extend_schema(
        request=RevokeSerializer,
        responses={200: RequestSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        data = _valid(RevokeSerializer, request.data)
        services.request_end(pk, actor=request.user, reason=data["reason"])
        selectors.wait_for_end(pk, timeout=settings.BREAKGLASS_REVOKE_WAIT_SECONDS)
        return _request_response(pk, request.user)


class CredentialView(APIView):
    @extend_schema(
        request=None,
        responses={
            200: CredentialSerializer,
            403: ERROR,
            404: ERROR,
            409: ERROR,
            410: ERROR,
        },
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        credential = services.reveal_credential(pk, actor=request.user)
        response = Response(CredentialSerializer(credential).data)
        response["Cache-Control"] = "no-store"
        return response


class ReviewSubmitView(APIView):
    @extend_schema(
        request=ReviewSubmitSerializer,
        responses={
            200: RequestSerializer,
            400: ERROR,
            403: ERROR,
            404: ERROR,
            409: ERROR,
        },
        description="The requester records what was done with the access.",
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        data = _valid(ReviewSubmitSerializer, request.data)
        services.submit_review(pk, actor=request.user, summary=data["summary"])
        return _request_response(pk, request.user)


class ReviewSignOffView(APIView):
    @extend_schema(
        request=ReviewSignOffSerializer,
        responses={
            200: RequestSerializer,
            400: ERROR,
            403: ERROR,
            404: ERROR,
            409: ERROR,
        },
        description="A compliance reviewer or admin accepts a submitted review.",
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        data = _valid(ReviewSignOffSerializer, request.data)
        services.sign_off_review(pk, actor=request.user, comment=data["comment"])
        return _request_response(pk, request.user)


class ReviewSendBackView(APIView):
    @extend_schema(
        request=ReviewSendBackSerializer,
        responses={
            200: RequestSerializer,
            400: ERROR,
            403: ERROR,
            404: ERROR,
            409: ERROR,
        },
        description="A compliance reviewer or admin returns a submitted review to "
        "its requester, saying why.",
    )
    def post(self, request, pk):
        selectors.check_visible(pk, request.user)
        data = _valid(ReviewSendBackSerializer, request.data)
        services.send_back_review(pk, actor=request.user, comment=data["comment"])
        return _request_response(pk, request.user)


class ReviewListView(APIView):
    @extend_schema(
        parameters=[ReviewQuerySerializer],
        responses={200: ReviewListItemSerializer(many=True), 400: ERROR, 403: ERROR},
        description="Compliance reviewers and admins see every review, others "
        "their own; overdue reviews first, then by due time.",
    )
    def get(self, request):
        if not selectors.can_list_reviews(request.user):
            raise NotAllowed("Only requesters, compliance and admins have reviews.")
        query = _valid(ReviewQuerySerializer, request.query_params)
        found = selectors.visible_reviews(request.user)
        if "status" in query:
            found = found.filter(status=query["status"])
        if query["overdue"] is not None:
            found = found.filter(overdue=query["overdue"])
        offset = query.get("offset", 0)
        found = found[offset : offset + query.get("limit", 200)]
        return Response(ReviewListItemSerializer(found, many=True).data)


class AuditListView(APIView):
    @extend_schema(
        parameters=[AuditQuerySerializer],
        responses={200: EventSerializer(many=True), 400: ERROR, 403: ERROR},
    )
    def get(self, request):
        _require_trail_reader(request.user)
        query = _valid(AuditQuerySerializer, request.query_params)
        found = selectors.events(
            incident=query.get("incident"),
            request=query.get("request"),
            since=query.get("since"),
            until=query.get("until"),
        )
        if "after_seq" in query:
            found = found.filter(seq__gt=query["after_seq"])
        found = found[: query.get("limit", 1000)]
        return Response(EventSerializer(found, many=True).data)


class AuditVerifyView(APIView):
    @extend_schema(responses={200: VerifySerializer, 403: ERROR})
    def get(self, request):
        _require_trail_reader(request.user)
        checked, first_bad = audit.verify_chain()
        return Response(
            {"ok": first_bad is None, "checked": checked, "first_bad": first_bad}
        )


class _ErrorsAsJson(DefaultContentNegotiation):
    """Answer refusals in JSON: `format` names the export's file, not a renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AuditExportView(APIView):
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _ErrorsAsJson

    @extend_schema(
        parameters=[AuditExportQuerySerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): OpenApiTypes.OBJECT,
            400: ERROR,
            403: ERROR,
        },
        description="The events the filter selects, in chain order, with every "
        "field their hash covers, streamed as a file to verify offline. Recorded "
        "in the trail as audit.exported.",
    )
    def get(self, request):
        _require_trail_reader(request.user)
        query = _valid(AuditExportQuerySerializer, request.query_params)
        file_format = query.pop("format")
        return export.export_trail(
            actor=request.user, file_format=file_format, trail_filter=query
        )


def _require_trail_reader(user):
    if not selectors.can_read_trail(user):
        raise NotAllowed("Only compliance reviewers and admins can read the trail.")


class FailingRevocationsView(APIView):
    @extend_schema(
        responses={200: FailingRevocationsSerializer, 403: ERROR},
        description="Grants due to end whose revocation is not done yet, and how "
        "many alerts are stuck.",
    )
    def get(self, request):
        if not selectors.can_see_operations(request.user):
            raise NotAllowed(
                "Only compliance reviewers and admins can see failing revocations."
            )
        now = clock.now()
        stuck = selectors.stuck_alerts(now)
        body = {
            "revocations": selectors.failing_revocations(now),
            "undelivered_alerts": stuck["count"],
            "oldest_undelivered_alert_at": stuck["oldest_created_at"],
        }
        return Response(FailingRevocationsSerializer(body).data)


class ComplianceReportView(APIView):
    @extend_schema(
        parameters=[ComplianceReportQuerySerializer],
        responses={200: ComplianceReportSerializer, 400: ERROR, 403: ERROR},
        description="Grants, approval, issuance and revocation times, late and "
        "failed revocations of the requests made from `since` to `until` (UTC days, "
        "both included; by default the last 30 days, at most 366).",
    )
    def get(self, request):
        if not report.can_see_report(request.user):
            raise NotAllowed(
                "Only compliance reviewers and admins can read the compliance report."
            )
        query = _valid(ComplianceReportQuerySerializer, request.query_params)
        since, until = report.report_range(query.get("since"), query.get("until"))
        figures = report.compliance_report(since, until)
        return Response(ComplianceReportSerializer(figures).data)


class OnCallListView(APIView):
    @extend_schema(
        parameters=[OnCallQuerySerializer],
        responses={200: OnCallShiftSerializer(many=True), 400: ERROR},
        description="Shifts on at `at`, or by default those not yet ended.",
    )
    def get(self, request):
        query = _valid(OnCallQuerySerializer, request.query_params)
        found = oncall.shifts(user=query.get("user"), at=query.get("at"))
        found = found[: query.get("limit", 500)]
        return Response(OnCallShiftSerializer(found, many=True).data)

    @extend_schema(
        request=OnCallShiftCreateSerializer,
        responses={201: OnCallShiftSerializer, 400: ERROR, 403: ERROR},
    )
    def post(self, request):
        _require_admin(request.user)
        data = _valid(OnCallShiftCreateSerializer, request.data)
        shift = oncall.add_oncall_shift(
            **data, actor=request.user, source=OnCallShift.Source.API
        )
        return Response(
            OnCallShiftSerializer(shift).data, status=status.HTTP_201_CREATED
        )


class OnCallDetailView(APIView):
    @extend_schema(responses={200: OnCallShiftSerializer, 404: ERROR})
    def get(self, request, pk):
        return Response(OnCallShiftSerializer(oncall.get_shift(pk)).data)

    @extend_schema(request=None, responses={204: None, 403: ERROR, 404: ERROR})
    def delete(self, request, pk):
        _require_admin(request.user)
        oncall.remove_oncall_shift(pk, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _require_admin(user):
    # Refuse before reading the body, so that nobody learns what would be valid.
    if not roles.has_role(user, roles.ADMIN):
        raise NotAllowed("Only admins can change the on-call roster.")


@extend_schema(exclude=True)
class UnknownView(APIView):
    """Answer any other address under the API in the contract's error shape."""

    def get(self, request, path):
        raise NotVisible("No such address in the API.")

    post = put = patch = delete = get
