"""The policy service as a front end of ``filterd serve`` (:class:`filterd.listener.Listener`)."""

from __future__ import annotations

from typing import Any, ClassVar

from filterd.config import Config
from filterd.listener import EngineListener, WorkerContext
from filterd.policy.server import PolicyServer
from filterd.policy.service import PolicyService
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services, open_services


class PolicyListener(EngineListener):
    """Postfix's policy delegation on ``policy_listen``, with this worker's own greylist
    store connection (opened here: a worker without the policy service never opens it)."""

    name: ClassVar[str] = "policy"

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        PolicyService(build_engine(cfg, Services(cfg))).check_config()

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        return None

    @classmethod
    def preload(cls, cfg: Config) -> Any:
        return None

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> PolicyListener:
        services = await open_services(cfg, context.damaged)
        server = PolicyServer.from_config(cfg, PolicyService(build_engine(cfg, services)))
        return cls(server, services, cfg.get("policy_shutdown_grace"))
