"""The engine's OpenAI-compatible HTTP API, with the standard library only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["HTTPRefusedError", "complete", "first_model", "get_json"]


class HTTPRefusedError(Exception):
    """The engine answered 4xx: the request itself is wrong; retrying will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status = status


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def first_model(endpoint: str, timeout_s: float = 10.0) -> str:
    """The first model the endpoint serves (``GET /models``)."""
    data = get_json(endpoint.rstrip("/") + "/models", timeout_s)
    return str(data["data"][0]["id"])


def complete(
    endpoint: str,
    *,
    model: str,
    prompt: str,
    max_tokens: int,
    xargs: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:
    """POST one completion; ``xargs`` travel in ``vllm_xargs`` (the engine's extra_args).

    ``ignore_eos`` makes every trial exactly ``max_tokens`` long, as planned.

    Raises:
        HTTPRefusedError: A 4xx answer (bad request arguments).
        OSError: The engine could not be reached or failed (5xx); worth retrying.
    """
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "vllm_xargs": {k: int(v) if isinstance(v, bool) else v for k, v in xargs.items()},
    }
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        if 400 <= exc.code < 500:
            raise HTTPRefusedError(exc.code, text) from None
        raise OSError(f"HTTP {exc.code}: {text[:2000]}") from None
