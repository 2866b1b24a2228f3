"""Map every refusal to the contract's error shape: {"code", "detail"[, "fields"]}."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from ..errors import BreakglassError, Throttled

_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "not_authenticated",
    exceptions.PermissionDenied: "not_allowed",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "invalid",
    exceptions.Throttled: "throttled",
}


def handle_exception(exc, context):
    if isinstance(exc, BreakglassError):
        body = {"code": exc.code, "detail": str(exc.detail)}
        if exc.fields:
            body["fields"] = exc.fields
        response = Response(body, status=exc.status)
        if isinstance(exc, Throttled):
            response["Retry-After"] = str(exc.retry_after)
        return response

    if isinstance(exc, RecursionError):
        # A body nested deeper than the parser can follow is bad input.
        exc = exceptions.ParseError("The JSON body is nested too deeply.")
    elif isinstance(exc, UnicodeError):
        # A header or body that is not valid UTF-8, the token's header included.
        exc = exceptions.ParseError("The request is not valid UTF-8.")

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, exceptions.ValidationError):
        return Response(
            {"code": "invalid", "detail": "Invalid input.", "fields": exc.detail},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.APIException):
        code = next((c for k, c in _CODES.items() if isinstance(exc, k)), "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if isinstance(
            exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed
        ):
            status_code = status.HTTP_401_UNAUTHORIZED
        else:
            status_code = exc.status_code
        response = Response({"code": code, "detail": str(detail)}, status=status_code)
        if getattr(exc, "auth_header", None):
            response["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            response["Retry-After"] = str(int(exc.wait))
        return response
    return None
