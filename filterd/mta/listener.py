"""The gateway's smtpd as a front end of ``filterd serve`` (:class:`filterd.listener.Listener`)."""

from __future__ import annotations

from typing import ClassVar

from filterd.config import Config, ConfigError
from filterd.listener import EngineListener, SharesContentPipeline, WorkerContext
from filterd.maps.errors import MapError
from filterd.mta.queue import Queue
from filterd.mta.smtpd import SmtpdHandler, SmtpdServer
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services, open_services

#: Postfix's content checks that cleanup runs even with smtpd_content_filter = no.
CLEANUP_CHECKS = ("header_checks", "mime_header_checks", "nested_header_checks", "body_checks")


class SmtpdListener(SharesContentPipeline, EngineListener):
    """The gateway MTA's smtpd on ``smtpd_listen`` (empty: off), with this worker's own
    greylist store connection for the restriction lists. With ``smtpd_content_filter``
    it shares the content pipeline's compiled rules and model, built once in the master
    for every front end that names ``"content"`` (the content filter, the milter)."""

    name: ClassVar[str] = "smtpd"

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """The restriction lists compile and cleanup's tables open, before anything is
        bound: a table that cannot be used is a fatal configuration error naming it."""
        engine = build_engine(cfg, Services(cfg))
        try:
            handler = SmtpdHandler(cfg, engine, None, None, Queue(cfg.get("queue_directory")))
        except MapError as exc:
            raise ConfigError(f"smtpd: {exc}") from None
        handler.check_config()

    @staticmethod
    def postfix_checks_only(cfg: Config) -> bool:
        """Content checks off, but Postfix's header/body checks configured: cleanup runs
        them all the same, as Postfix's does."""
        return not cfg.get("smtpd_content_filter") and any(cfg.get(name) for name in CLEANUP_CHECKS)

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        return "content" if cfg.get("smtpd_content_filter") else None

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> SmtpdListener:
        services = await open_services(cfg, context.damaged)
        pipeline = quarantine = None
        if cfg.get("smtpd_content_filter") or cls.postfix_checks_only(cfg):
            from filterd.content.pipeline import ContentPipeline
            from filterd.content.postfix_checks import PostfixChecks
            from filterd.content.quarantine import Quarantine
            from filterd.content.verdict import VerdictPolicy

            if cfg.get("smtpd_content_filter"):
                pipeline = ContentPipeline.from_config(cfg, context.preloaded)
            else:
                pipeline = ContentPipeline(VerdictPolicy.from_config(cfg),
                                           postfix_checks=PostfixChecks.from_config(cfg))
            quarantine = Quarantine(cfg)
        handler = SmtpdHandler(cfg, build_engine(cfg, services), pipeline, quarantine,
                               Queue(cfg.get("queue_directory")))
        server = SmtpdServer(handler, max_connections=cfg.get("default_process_limit"),
                             timeout=cfg.get("smtpd_timeout"))
        return cls(server, services, cfg.get("smtpd_shutdown_grace"))
