"""The policy service as a front end of ``filterd serve`` (:class:`filterd.listener.Listener`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, ClassVar

from filterd.config import Config
from filterd.greylist import Greylister, open_store
from filterd.listener import WorkerContext
from filterd.policy.server import PolicyServer
from filterd.policy.service import PolicyService
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services

log = logging.getLogger("filterd.master")


class PolicyListener:
    """Postfix's policy delegation on ``policy_listen``, with this worker's own greylist
    store connection (opened here: a worker without the policy service never opens it)."""

    name: ClassVar[str] = "policy"
    preloads: ClassVar[bool] = False
    uses_greylist: ClassVar[bool] = True

    def __init__(self, server: PolicyServer, services: Services, greylister: Greylister, grace: float):
        self.server = server
        self.services = services
        self.greylister = greylister
        self.grace = grace

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        PolicyService(build_engine(cfg, Services(cfg))).check_config()

    @classmethod
    def preload(cls, cfg: Config) -> Any:
        return None

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> PolicyListener:
        store = open_store(cfg)
        store.on_damaged = context.damaged
        greylister = Greylister(cfg, store, cfg.get("myhostname"))
        await greylister.start()
        services = Services(cfg, greylister=greylister)
        server = PolicyServer.from_config(cfg, PolicyService(build_engine(cfg, services)))
        return cls(server, services, greylister, cfg.get("policy_shutdown_grace"))

    async def start(self, sock: socket.socket) -> None:
        await self.server.start(sock)

    def reload(self) -> None:
        """postgrey's SIGHUP: the greylist whitelist files read again, off the event loop."""
        greylister = self.greylister

        async def run() -> None:
            try:
                await asyncio.to_thread(greylister.reload_whitelists)
                log.info("reloaded greylist whitelists on SIGHUP")
            except Exception:  # noqa: BLE001 - keep the old lists, say why
                log.exception("reloading greylist whitelists failed; keeping the old ones")
        asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        await self.server.stop(self.grace)
        await self.services.close()
