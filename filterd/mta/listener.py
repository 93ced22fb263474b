"""The gateway's smtpd as a front end of ``filterd serve`` (:class:`filterd.listener.Listener`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from filterd.config import Config
from filterd.listener import EngineListener, WorkerContext
from filterd.mta.queue import Queue
from filterd.mta.smtpd import SmtpdHandler, SmtpdServer
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services, open_services

if TYPE_CHECKING:  # imported where used: an smtpd without content checks never loads it
    from filterd.content.pipeline import Preloaded


class SmtpdListener(EngineListener):
    """The gateway MTA's smtpd on ``smtpd_listen`` (empty: off), with this worker's own
    greylist store connection for the restriction lists. With ``smtpd_content_filter``
    it shares the content pipeline's compiled rules and model, built once in the master
    for every front end that names ``"content"`` (the content filter, the milter)."""

    name: ClassVar[str] = "smtpd"

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        SmtpdHandler(cfg, build_engine(cfg, Services(cfg)), None, None,
                     Queue(cfg.get("queue_directory"))).check_config()

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        return "content" if cfg.get("smtpd_content_filter") else None

    @classmethod
    def preload(cls, cfg: Config) -> Preloaded:
        from filterd.content.pipeline import Preloaded

        return Preloaded.from_config(cfg)

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> SmtpdListener:
        services = await open_services(cfg, context.damaged)
        pipeline = quarantine = None
        if cfg.get("smtpd_content_filter"):
            from filterd.content.pipeline import ContentPipeline
            from filterd.content.quarantine import Quarantine

            pipeline = ContentPipeline.from_config(cfg, context.preloaded)
            quarantine = Quarantine(cfg)
        handler = SmtpdHandler(cfg, build_engine(cfg, services), pipeline, quarantine,
                               Queue(cfg.get("queue_directory")))
        server = SmtpdServer(handler, max_connections=cfg.get("default_process_limit"),
                             timeout=cfg.get("smtpd_timeout"))
        return cls(server, services, cfg.get("smtpd_shutdown_grace"))
