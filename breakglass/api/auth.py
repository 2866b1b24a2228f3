"""API token authentication: knox tokens, refusing malformed ones before any query."""

from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from rest_framework import exceptions


class TokenAuthentication(KnoxTokenAuthentication):
    """Knox's `Authorization: Token <token>`, for tokens of letters and digits only.

    Knox tokens are hexadecimal; anything else, a NUL byte included, which
    PostgreSQL cannot even compare, is an invalid token, not a server error.
    """

    def authenticate_credentials(self, token):
        text = token.decode("utf-8")
        if not (text.isascii() and text.isalnum()):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(token)


class TokenScheme(KnoxTokenScheme):
    target_class = TokenAuthentication
