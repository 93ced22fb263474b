"""What every front end offers ``filterd serve``: one interface, whatever the protocol.

``serve`` binds ``<name>_listen`` for each front end the configuration enables, forks the
workers, and in each worker builds the front end with :meth:`Listener.from_config`,
starts it on its socket and stops it on SIGTERM with the front end's own grace period.
Each front end opens the services it uses (the policy service its greylist store, the
content filter its pipeline), so a worker opens nothing that none of its front ends
needs. A front end whose start-up work is slow (compiled content rules) builds it once in
the master with :meth:`Listener.preload`; the others start listening without waiting for
it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from filterd.config import Config
from filterd.config.types import Endpoint

if TYPE_CHECKING:  # the engine's services, for the type only: this module stays a leaf
    from filterd.content.pipeline import Preloaded
    from filterd.restrict.services import Services


@dataclass
class WorkerContext:
    """What a worker hands every front end it builds.

    ``preloaded`` is what :meth:`Listener.preload` built for this front end's
    :meth:`Listener.preloads` (None if it names none); ``damaged`` stops the worker so that the master repairs the
    greylist store (``what`` names the fault)."""

    preloaded: Any = None
    damaged: Callable[[str], None] | None = None


class Listener(Protocol):
    """A front end as ``serve`` sees it. ``name`` names its parameters: it listens on
    ``<name>_listen`` (empty: not enabled)."""

    name: ClassVar[str]
    #: The greylist store is checked (and repaired) by the master before any worker starts.
    uses_greylist: ClassVar[bool]

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Everything that can be checked without opening state; raises ConfigError.
        Runs in the master before anything is bound or forked."""

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        """The name of the slow, read-only start-up work this front end needs with ``cfg``
        (``"content"``: compiled rules and the Bayes model), or None. Front ends naming
        the same work share one build; the others do not wait for it."""

    @classmethod
    def preload(cls, cfg: Config) -> Any:
        """Slow, read-only start-up work done once in the master and shared by the workers
        (copy-on-write), when :meth:`preloads` names some. The front end starts once it
        is ready."""

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> Listener:
        """The front end of one worker, with the services it uses opened."""

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, bound and listening already (shared with the other workers)."""

    def reload(self) -> None:
        """SIGHUP with the configuration unchanged: re-read what the front end reads
        from files of its own (postgrey's whitelists)."""

    async def stop(self) -> None:
        """Stop accepting, answer what is in flight within the front end's own grace
        period, close, and release the services it opened."""


def enabled(front_ends: tuple[type[Listener], ...], cfg: Config) -> list[type[Listener]]:
    """The front ends ``cfg`` turns on: those whose ``<name>_listen`` is not empty."""
    return [fe for fe in front_ends if listen_endpoints(cfg, fe.name)]


def listen_endpoints(cfg: Config, name: str) -> list[Endpoint]:
    """Where front end ``name`` listens: ``<name>_listen`` is one endpoint (policy,
    filter, milter) or a list of them (smtpd, like Postfix's several smtpd lines)."""
    value = cfg.get(f"{name}_listen")
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class _Server(Protocol):
    async def start(self, sock: socket.socket) -> None: ...
    async def stop(self, grace: float) -> None: ...


class SharesContentPipeline:
    """For a front end that runs the content pipeline (content filter, milter, smtpd):
    its slow start-up work is the pipeline's compiled rules and Bayes model, built once
    and shared by every such front end."""

    @classmethod
    def preload(cls, cfg: Config) -> Preloaded:
        from filterd.content.pipeline import Preloaded  # a daemon without content checks never loads it

        return Preloaded.from_config(cfg)


class EngineListener:
    """What a front end that runs the restriction engine on its own greylist store
    connection (policy service, milter) does around its server: start it, reload the
    whitelists on SIGHUP, stop it with its grace period, then close the services."""

    uses_greylist: ClassVar[bool] = True

    def __init__(self, server: _Server, services: Services, grace: float):
        self.server = server
        self.services = services
        self.grace = grace

    async def start(self, sock: socket.socket) -> None:
        await self.server.start(sock)

    def reload(self) -> None:
        asyncio.get_running_loop().create_task(self.services.reload_whitelists())

    async def stop(self) -> None:
        await self.server.stop(self.grace)
        await self.services.close()
