"""Every object the application shares, each under its own typed key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bridge.metrics import Metrics
from bridge.settings import Settings
from connectors import http as outside
from storage.port import Store

if TYPE_CHECKING:
    from bridge.channels import ChannelManager
    from bridge.deadletters import DeadLetters
    from bridge.delivery.child_process import ChildProcess
    from bridge.delivery.worker import OutboxWorker
    from bridge.relay import Relay
    from bridge.retention import Pruner
    from connectors.base import LiveChatConnector

SETTINGS = web.AppKey("settings", Settings)
DATABASE: web.AppKey[Store] = web.AppKey("database")
HTTP = web.AppKey("http", outside.Client)
METRICS = web.AppKey("metrics", Metrics)
RELAY: web.AppKey[Relay] = web.AppKey("relay")
CHANNELS: web.AppKey[ChannelManager] = web.AppKey("channels")
WORKER: web.AppKey[OutboxWorker] = web.AppKey("worker")
PRUNER: web.AppKey[Pruner] = web.AppKey("pruner")
DEAD_LETTERS: web.AppKey[DeadLetters] = web.AppKey("dead_letters")
LIVECHATS: web.AppKey[dict[str, LiveChatConnector]] = web.AppKey("livechats")
# Present only with delivery.worker = "process".
DELIVERY_PROCESS: web.AppKey[ChildProcess] = web.AppKey("delivery_process")
