"""The milter as a front end of ``filterd serve`` (:class:`filterd.listener.Listener`)."""

from __future__ import annotations

from typing import ClassVar

from filterd.config import Config
from filterd.listener import EngineListener, SharesContentPipeline, WorkerContext
from filterd.milter.server import MilterServer
from filterd.milter.service import MilterService
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services, open_services


class MilterListener(SharesContentPipeline, EngineListener):
    """The milter (protocol 6) on ``milter_listen``, with this worker's own greylist store
    connection; with ``milter_content_filter`` it shares the content pipeline's rules
    and model that the master built once (as the content filter does)."""

    name: ClassVar[str] = "milter"

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        MilterService(build_engine(cfg, Services(cfg)), None, None).check_config()

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        return "content" if cfg.get("milter_content_filter") else None

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> MilterListener:
        services = await open_services(cfg, context.damaged)
        service = MilterService.from_config(cfg, build_engine(cfg, services), context.preloaded)
        return cls(MilterServer.from_config(cfg, service), services, cfg.get("milter_shutdown_grace"))
