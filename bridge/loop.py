"""The event loop a process runs on: its own module, so the delivery process can choose one
without importing the CLI and the web application."""

from __future__ import annotations

import asyncio


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for, or when installed and the choice is "auto"."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
