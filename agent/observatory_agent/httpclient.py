"""The agent's outgoing HTTP with aiohttp (partials to processors, application scrapes): one session shape.

Every request opens its own connection (``force_close``). A kept-alive connection outlives the
routing it was made under: one that reached the wrong peer — a Service address used before
kube-proxy routed it, which on some networks leads to a proxy that answers everything — would be
reused for every later request, and the right peer never reached (issue 9's stalled agent). A
fresh connection per request costs a local handshake once a window or an interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


def session(timeout: float) -> aiohttp.ClientSession:
    """A client session whose requests time out after ``timeout`` seconds and never share a connection."""
    import aiohttp  # noqa: PLC0415 - lazy: agents that neither scrape nor feed a processor never load the client

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), connector=aiohttp.TCPConnector(force_close=True)
    )
