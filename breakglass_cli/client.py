"""Calls to the REST API, and the exit codes its answers map to."""

from importlib import metadata

import requests

TIMEOUT_SECONDS = 30

# Exit codes scripts can rely on (README: "Command-line client").
OK = 0
REFUSED = 1
USAGE = 2
NOT_AUTHENTICATED = 3
UNAVAILABLE = 4


class Failure(Exception):
    """A call that did not succeed: its exit code, the API's code and detail."""

    def __init__(self, exit_code, detail, *, code="", body=None):
        super().__init__(detail)
        self.exit_code = exit_code
        self.detail = detail
        self.code = code
        self.body = body


def _version():
    try:
        return metadata.version("breakglass")
    except metadata.PackageNotFoundError:
        return "unknown"


class Client:
    """A session with one Breakglass server, authenticated with an API token."""

    def __init__(self, server, token, *, timeout=TIMEOUT_SECONDS):
        if not server:
            raise Failure(
                NOT_AUTHENTICATED,
                "no server configured: run `breakglass login` or set BREAKGLASS_URL",
                code="not_configured",
            )
        if not server.startswith(("http://", "https://")):
            raise Failure(USAGE, f"not an http(s) address: {server}")
        self.server = server
        self.timeout = timeout
        self.session = requests.Session()
        # The token is sent to this server only; no proxy or netrc credentials
        # replace it.
        self.session.trust_env = False
        self.session.headers.update(
            {
                "Accept": "application/json",
                "User-Agent": f"breakglass-cli/{_version()}",
            }
        )
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def get(self, path, params=None):
        return self._call("GET", path, params=params)

    def post(self, path, body=None):
        return self._call("POST", path, json=body if body is not None else {})

    def _call(self, method, path, **options):
        url = f"{self.server}/api/v1/{path}"
        try:
            response = self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **options
            )
        except requests.Timeout:
            raise Failure(
                UNAVAILABLE, f"{self.server} did not answer in time"
            ) from None
        except requests.RequestException as exc:
            raise Failure(
                UNAVAILABLE, f"cannot reach {self.server}: {_reason(exc)}"
            ) from None
        return _answer(response)


def _reason(exc):
    # The innermost cause says what happened ("Connection refused") without the
    # layers of pool and retry messages around it.
    cause = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    return str(cause) or type(cause).__name__


def _answer(response):
    try:
        body = response.json()
    except ValueError:
        body = None
    if 200 <= response.status_code < 300 and body is not None:
        return body

    if 300 <= response.status_code < 400:
        where = response.headers.get("Location", "elsewhere")
        raise Failure(
            UNAVAILABLE,
            f"the server redirects to {where}; log in with that address",
            code="redirected",
        )
    if not isinstance(body, dict) or "code" not in body:
        raise Failure(
            UNAVAILABLE,
            f"unexpected answer from the server: HTTP {response.status_code}",
            code="unexpected_answer",
        )
    detail = str(body.get("detail", ""))
    if body.get("fields"):
        detail += " " + _fields(body["fields"])
    if response.status_code == 429 and response.headers.get("Retry-After"):
        detail += f" (retry after {response.headers['Retry-After']} s)"
    if response.status_code == 401:
        exit_code = NOT_AUTHENTICATED
    elif response.status_code >= 500:
        exit_code = UNAVAILABLE
    else:
        exit_code = REFUSED
    raise Failure(exit_code, detail, code=str(body["code"]), body=body)


def _fields(fields):
    if not isinstance(fields, dict):
        return str(fields)
    parts = []
    for name, problems in fields.items():
        text = "; ".join(problems) if isinstance(problems, list) else str(problems)
        parts.append(f"{name}: {text}")
    return " ".join(parts)
