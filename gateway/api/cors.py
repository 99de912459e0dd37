"""Cross-origin requests from web pages: which origins, methods and headers a browser may use."""

from __future__ import annotations

from typing import Any

from gateway.settings import Settings

LOOPBACK_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"
"""Any page served on a loopback address, any port: trusted like curl when no GATEWAY_TOKEN is set."""

METHODS = ("GET", "HEAD", "POST", "DELETE")
HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "If-None-Match", "Range")
EXPOSED = (
    "ETag",
    "Content-Disposition",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Retry-After",
    "WWW-Authenticate",
)
"""Response headers a page's script may read besides the CORS-safelisted ones."""
MAX_AGE_S = 600
"""How long a browser may cache a preflight answer."""


def cors_options(settings: Settings) -> dict[str, Any]:
    """Starlette `CORSMiddleware` arguments: GATEWAY_CORS_ORIGINS always, loopback pages too
    without a token. No cookies are used (`allow_credentials` stays off): scripts send the token."""
    return {
        "allow_origins": tuple(settings.gateway_cors_origins),
        "allow_origin_regex": None if settings.gateway_token else LOOPBACK_ORIGINS,
        "allow_methods": METHODS,
        "allow_headers": HEADERS,
        "expose_headers": EXPOSED,
        "allow_private_network": True,  # a listed LAN page calling the gateway on loopback
        "max_age": MAX_AGE_S,
    }
