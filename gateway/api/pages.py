"""Pages for people: the status page at `/`, its assets under `/static/`, and the API docs (`/docs`,
`/redoc`) with Swagger UI and ReDoc served from the installed `fastapi-offline` package, no CDN."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from gateway.errors import NotFoundError

router = APIRouter(include_in_schema=False)

PAGES = Path(str(files("gateway") / "static"))
"""The pages' own files (package data)."""
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
"""Swagger UI and ReDoc as fastapi-offline ships them."""

_ASSETS: dict[str, Path] = {
    **{name: PAGES / name for name in ("page.css", "page.js", "status.js")},
    **{
        name: DOCS_ASSETS / name
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
    },
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
_CACHE = "public, max-age=3600"
_NO_STORE = {"Cache-Control": "no-cache"}

OPENAPI_URL = "/openapi.json"
TITLE = "BranchKey Gateway"


@router.get("/")
async def get_status_page() -> FileResponse:
    """The status page: session, run, channel, live events, aggregations, uploads, metrics."""
    return FileResponse(PAGES / "status.html", media_type="text/html", headers=_NO_STORE)


@router.get("/static/{name}")
async def get_asset(name: str) -> FileResponse:
    """One of the pages' files (a fixed list: nothing else on disk is reachable)."""
    path = _ASSETS.get(name)
    if path is None:
        raise NotFoundError(f"No asset named {name!r}.")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": _CACHE})


@router.get("/docs")
async def get_swagger_ui() -> HTMLResponse:
    """Swagger UI for the gateway's OpenAPI document, from local assets."""
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{TITLE} - API",
        swagger_js_url="/static/swagger-ui-bundle.js",
        swagger_css_url="/static/swagger-ui.css",
        swagger_favicon_url="/static/favicon.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect")
async def get_swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def get_redoc() -> HTMLResponse:
    """ReDoc for the gateway's OpenAPI document, from local assets (no web fonts)."""
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{TITLE} - API",
        redoc_js_url="/static/redoc.standalone.js",
        redoc_favicon_url="/static/favicon.png",
        with_google_fonts=False,
    )
