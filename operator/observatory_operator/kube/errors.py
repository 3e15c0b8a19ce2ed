"""The operator's tiny error vocabulary for API calls; third-party errors are mapped here with ``raise ... from``.

::

    KubeError                      every failed API call
    ├── TemporaryError             429, 5xx, timeouts, refused connections: retry with backoff
    │   ├── Conflict               409: another write raced ours, or a uid precondition found a namesake
    │   └── NotLeader              this replica may not write (it lost or never held the Lease)
    └── PermanentError             4xx the same request will get again: a condition and a Warning Event
        ├── NotFound               404 (callers that expect absence catch this one)
        └── ImmutableField         422 naming an immutable field (a DaemonSet selector): recreate the object
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final

DEFAULT_RETRY_SECONDS: Final = 5.0


class KubeError(Exception):
    """A failed API call; ``status`` is the HTTP status (0 when no answer arrived)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class TemporaryError(KubeError):
    """Will likely succeed if retried after ``delay`` seconds."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "", delay: float = DEFAULT_RETRY_SECONDS):
        super().__init__(message, status=status, reason=reason)
        self.delay = delay


class Conflict(TemporaryError):
    """409: someone else's write raced ours (resourceVersion, a create race) or a uid precondition failed."""


class NotLeader(TemporaryError):
    """Raised before a write is sent by a replica that does not hold the Lease: nothing reached the API server."""


class PermanentError(KubeError):
    """The same request will fail the same way: somebody has to change something."""


class NotFound(PermanentError):
    """The object does not exist."""


class ImmutableField(PermanentError):
    """The change touches a field the API server refuses to update; delete and recreate the object."""


def _message(body: str) -> tuple[str, str]:
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body.strip()[:1024], ""
    if isinstance(data, dict):
        return str(data.get("message", body))[:4096], str(data.get("reason", ""))
    return body[:1024], ""


def from_response(status: int, body: str, headers: Any = None, *, what: str = "") -> KubeError:
    """Map a non-2xx answer onto the vocabulary."""
    message, reason = _message(body)
    text = f"{what}: {message}" if what else message
    if status in {409, 429} or status >= 500:
        # 429: API Priority and Fairness throttling; 5xx: the API server or etcd is struggling.
        delay = DEFAULT_RETRY_SECONDS
        retry_after = headers.get("Retry-After") if headers is not None else None
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP-date Retry-After keeps the default
                delay = max(float(retry_after), 1.0)
        kind = Conflict if status == 409 else TemporaryError
        return kind(text, status=status, reason=reason, delay=delay)
    if status == 404:
        return NotFound(text, status=status, reason=reason)
    if status == 422 and "immutable" in message:
        return ImmutableField(text, status=status, reason=reason)
    return PermanentError(text, status=status, reason=reason)
