"""``leadpulse content load`` while a sink owns the embedded engine: the sink inserts the catalogue for it.

Why: an embedded chDB directory is owned by one process (see ``sinks/query_service.py``), and marketing
publishes content while the pipeline runs; stopping the sink to load a file was the only way before. The
CLI reads and validates the file itself (errors name the entry and field, as without a sink), then posts
the entries to ``POST /content`` on the sink that owns this directory, which validates them again (it is an
HTTP endpoint) and inserts them. With a ClickHouse server nothing goes through the sink.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sinks.content_catalogue import CatalogueError

Loader = Callable[[list[dict[str, Any]], str], int]


class CatalogueServiceError(Exception):
    """The sink refused or failed the load; the message is the sink's reason."""


def add_catalogue_route(app: web.Application, load: Loader) -> None:
    """``POST /content`` with ``{"entries": [...], "source": "file name"}`` → ``{"loaded": n}``."""

    async def post(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            entries, source = body["entries"], str(body.get("source") or "<input>")
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected a JSON body {"entries": [...]}'}, status=400)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return web.json_response({"error": "entries: expected a list of objects"}, status=400)
        try:
            count = await asyncio.get_running_loop().run_in_executor(None, load, entries, source)
        except CatalogueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:  # ClickHouse refused the insert: say so, the CLI exits 1
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        return web.json_response({"loaded": count})

    app.router.add_post("/content", post)


def load_via_sink(base_url: str, entries: list[dict[str, Any]], source: str, timeout: float = 120.0) -> int:
    """Post validated entries to the sink; the number it loaded, or CatalogueServiceError with its reason."""
    data = json.dumps({"entries": entries, "source": source}, default=str).encode()
    request = urllib.request.Request(
        f"{base_url}/content", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(json.loads(response.read())["loaded"])
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise CatalogueServiceError(f"the sink at {base_url} did not load the catalogue: {detail}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CatalogueServiceError(f"the sink at {base_url} did not answer: {exc}") from None
