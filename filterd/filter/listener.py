"""The content filter as a front end of ``filterd serve`` (:class:`filterd.listener.Listener`)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, ClassVar


from filterd.config import Config
from filterd.listener import SharesContentPipeline, WorkerContext

if TYPE_CHECKING:  # imported where used: a daemon without a content filter never loads it
    from filterd.filter.server import ContentFilterServer


class FilterListener(SharesContentPipeline):
    """The after-queue content filter on ``filter_listen``. Its compiled rules and Bayes
    model are built once in the master (:meth:`preload`, up to a minute on a fresh
    data_directory) and shared by the workers; the other front ends do not wait for them,
    and Postfix's connections to this one wait in the socket's queue meanwhile."""

    name: ClassVar[str] = "filter"
    uses_greylist: ClassVar[bool] = False

    def __init__(self, server: ContentFilterServer, grace: float):
        self.server = server
        self.grace = grace

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Nothing to check before the rules load: the pipeline's parameters are checked
        when the configuration is validated, and the rules when they are compiled."""

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        return "content"

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> FilterListener:
        from filterd.content.pipeline import ContentPipeline
        from filterd.filter.server import ContentFilterServer

        pipeline = ContentPipeline.from_config(cfg, context.preloaded)
        return cls(ContentFilterServer.from_config(cfg, pipeline), cfg.get("filter_shutdown_grace"))

    async def start(self, sock: socket.socket) -> None:
        await self.server.start(sock)

    def reload(self) -> None:
        """Nothing of its own to re-read: tables reload by themselves when their files change."""

    async def stop(self) -> None:
        await self.server.stop(self.grace)


