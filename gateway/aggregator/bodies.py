"""Small JSON request bodies (reports, admin commands), read whole but bounded."""

from __future__ import annotations

import json
from typing import Any, Final

from fastapi import Request

from gateway.aggregator.errors import BadRequestError, PayloadTooLargeError

MAX_JSON_BODY: Final = 1 << 20


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (whatever its Content-Type); 413 beyond MAX_JSON_BODY, 400 if not JSON."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLargeError(f"The request body is larger than {MAX_JSON_BODY} bytes.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequestError("The request body must be JSON.") from None
    except RecursionError:
        raise BadRequestError("The request body is JSON nested too deeply.") from None
