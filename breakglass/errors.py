"""Business-rule errors with the stable codes and statuses of CONTRACT.md, section 4."""


class BreakglassError(Exception):
    """A refused operation; nothing was changed except what its docstring says."""

    status = 400
    code = "invalid"
    detail = "The request is invalid."

    def __init__(self, detail=None, *, code=None, fields=None):
        self.detail = detail or self.detail
        self.code = code or self.code
        self.fields = fields
        super().__init__(self.detail)


class InvalidInput(BreakglassError):
    status = 400
    code = "invalid"


class NotAllowed(BreakglassError):
    status = 403
    code = "not_allowed"
    detail = "You are not allowed to do this."


class OtpInvalid(NotAllowed):
    code = "otp_invalid"
    detail = "The one-time code is wrong, expired or already used."


class NotVisible(BreakglassError):
    status = 404
    code = "not_found"
    detail = "Not found."


class WrongState(BreakglassError):
    status = 409
    code = "wrong_state"
    detail = "The request is not in a state that allows this."


class CredentialAlreadyRevealed(BreakglassError):
    status = 410
    code = "credential_already_revealed"
    detail = "The credential was already revealed; it is shown only once."


class Throttled(BreakglassError):
    status = 429
    code = "throttled"
    detail = "Too many attempts; try again later."

    def __init__(self, detail=None, *, retry_after=60, **kwargs):
        super().__init__(detail, **kwargs)
        self.retry_after = max(1, int(retry_after))


class ProviderError(Exception):
    """A target refused or could not be reached; the message never holds a secret."""
