"""A client for Postfix policy services, so filterd can chain to another one.

It behaves as Postfix's smtpd does towards a policy server: persistent connections,
one request at a time per connection, a time limit per request, a retry on a fresh
connection, and ``default_action`` when the server cannot be used.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from filterd.config.types import Endpoint, as_time, parse_endpoint, split_list
from filterd.restrict.delegation.protocol import PolicyParser, PolicyRequest, encode_request

log = logging.getLogger("filterd.policy")


class PolicyServiceError(Exception):
    """The policy service could not give an answer (down, timed out, bad reply)."""


@dataclass(frozen=True)
class ServiceSpec:
    """``check_policy_service`` argument: endpoint plus Postfix 3.0 per-service options."""

    endpoint: Endpoint
    timeout: float = 100.0
    default_action: str = "451 4.3.5 Server configuration problem"
    try_limit: int = 2

    @classmethod
    def parse(cls, arg: str) -> "ServiceSpec":
        """``inet:host:port``, ``unix:/path`` or ``{ endpoint, name=value, ... }``."""
        text = arg.strip()
        if not text.startswith("{"):
            return cls(parse_endpoint(text))
        if not text.endswith("}"):
            raise ValueError(f"missing '}}' in {arg!r}")
        items = split_list(text[1:-1])
        if not items:
            raise ValueError(f"no endpoint in {arg!r}")
        opts: dict[str, str] = {}
        for item in items[1:]:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected name=value after the endpoint in {arg!r}, got {item!r}")
            opts[name.strip()] = value.strip()
        unknown = set(opts) - {"timeout", "default_action", "try_limit", "max_idle", "max_ttl",
                               "request_limit", "retry_delay", "policy_context"}
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} in {arg!r}")
        spec = cls(parse_endpoint(items[0]))
        if "timeout" in opts:
            spec = cls(spec.endpoint, as_time("s")(opts["timeout"]), spec.default_action, spec.try_limit)
        if "default_action" in opts:
            spec = cls(spec.endpoint, spec.timeout, opts["default_action"], spec.try_limit)
        if "try_limit" in opts:
            spec = cls(spec.endpoint, spec.timeout, spec.default_action, max(1, int(opts["try_limit"])))
        return spec


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = PolicyParser()

    async def ask(self, payload: bytes) -> PolicyRequest:
        self.writer.write(payload)
        await self.writer.drain()
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise PolicyServiceError("connection closed by the policy service")
            for item in self.parser.feed(data):
                if isinstance(item, PolicyRequest):
                    return item
                raise PolicyServiceError(item.message)

    def close(self) -> None:
        self.writer.close()


class PolicyClient:
    """A pool of persistent connections to one policy service."""

    def __init__(self, spec: ServiceSpec, pool_size: int = 8):
        self.spec = spec
        self._idle: list[_Connection] = []
        self._pool_size = pool_size

    async def _connect(self) -> _Connection:
        ep = self.spec.endpoint
        if ep.kind == "unix":
            reader, writer = await asyncio.open_unix_connection(ep.path)
        else:
            reader, writer = await asyncio.open_connection(ep.host, ep.port)
        return _Connection(reader, writer)

    async def query(self, attrs: dict[str, str]) -> str:
        """The ``action`` the service answers; raises PolicyServiceError after try_limit."""
        payload = encode_request(attrs)
        last = "no attempt"
        for _ in range(self.spec.try_limit):
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._connect(), self.spec.timeout)
                reply = await asyncio.wait_for(conn.ask(payload), self.spec.timeout)
            except (OSError, asyncio.TimeoutError, PolicyServiceError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if conn is not None:
                    conn.close()
                continue
            action = reply.attrs.get("action")
            if action is None:
                conn.close()
                raise PolicyServiceError(f"reply without action= from {self.spec.endpoint}")
            if len(self._idle) < self._pool_size:
                self._idle.append(conn)
            else:
                conn.close()
            return action
        raise PolicyServiceError(f"policy service {self.spec.endpoint} unavailable: {last}")

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
