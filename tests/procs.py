"""The bridge as a real `serve` process, and senders that behave like real outside parties.

`BridgeProcess` writes the TOML, starts `python -m bridge --config FILE serve`, waits for
`GET /readyz` == 200, and can kill it (-9), stop it (SIGTERM) and start it again on the same
port and database. Each run's stdout and stderr go to their own file (a pipe nobody reads
would fill up and stall the process), so every log line survives a kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from storage.pg_dsn import passwords as dsn_passwords
from tests.conftest import ADMIN_TOKEN, API_TOKEN, CODE, HOOK_TOKEN

ROOT = Path(__file__).resolve().parent.parent

# What a sender does on trouble: wait a little and send the same thing again.
RETRY_PAUSE = 0.05
TRANSIENT = (aiohttp.ClientError, TimeoutError, OSError, ValueError)


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m bridge *args` as an operator runs it, to its end: no BRIDGE_* variable of
    the test run's own environment, only `env`'s."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def toml(config: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{prefix}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in scalars.items())
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", config)
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    """One start of the process: its log file and how it ended."""

    log: Path
    proc: asyncio.subprocess.Process
    killed: bool = False

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


class BridgeProcess:
    def __init__(self, config: dict[str, Any], directory: Path, name: str = "bridge") -> None:
        self.config = config
        self.port = int(config["server"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        self.name = name
        self.config_path = directory / f"{name}.toml"
        self.config_path.write_text(toml(config))
        self.runs: list[Run] = []

    @property
    def db_path(self) -> Path:
        return Path(self.config["storage"]["path"])

    @property
    def webhook(self) -> str:
        return f"{self.url}/messengers/acme/webhook"

    def hook_url(self, livechat_id: str = "support", token: str = "") -> str:
        token = token or self.config["livechats"][livechat_id]["hook_token"]
        return f"{self.url}/livechats/{livechat_id}/webhook/{token}"

    @property
    def running(self) -> bool:
        return bool(self.runs) and self.runs[-1].proc.returncode is None

    async def start(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        run = await self.spawn()
        proc = run.proc
        deadline = time.monotonic() + timeout
        while not await self.ready(http):
            if proc.returncode is not None:
                raise AssertionError(
                    f"bridge exited with {proc.returncode} before it was ready:\n{run.text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge not ready after {timeout} s:\n{run.text()}")
            await asyncio.sleep(0.05)

    async def spawn(self) -> Run:
        """Start the process and return at once, without waiting for it to be ready."""
        assert not self.running, "already running"
        log = self.directory / f"{self.name}.{len(self.runs) + 1}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge",
                "--config",
                str(self.config_path),
                "serve",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=ROOT,
                env=env,
            )
        run = Run(log, proc)
        self.runs.append(run)
        return run

    async def ready(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(
                f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                return resp.status == 200
        except TRANSIENT:
            return False

    async def kill(self) -> None:
        """kill -9: no shutdown, no flush, no goodbye."""
        run = self.runs[-1]
        run.killed = True
        run.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(run.proc.wait(), 20)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        run = self.runs[-1]
        if run.proc.returncode is None:
            run.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(run.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"bridge did not stop within {timeout} s after SIGTERM") from None

    async def restart(self, http: aiohttp.ClientSession, *, kill: bool = True) -> None:
        if kill:
            await self.kill()
        else:
            await self.terminate()
        await self.start(http)

    async def stop_quietly(self) -> None:
        """For a test's `finally`: whatever happened, no process is left behind."""
        if self.running:
            with contextlib.suppress(AssertionError):
                await self.terminate(timeout=15)

    # --- logs ------------------------------------------------------------------------

    def log_text(self, *, include_killed: bool = True) -> str:
        return "".join(r.text() for r in self.runs if include_killed or not r.killed)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": "(not JSON)", "raw": raw})
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == name]

    def assert_clean_logs(self, allow: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """No traceback, no secret, and every line is a JSON log line, in every run (killed
        ones too: a kill -9 cuts a run's log short, it never adds a traceback to it); the
        delivery process's lines included, as it writes to the same output. `allow` exempts
        the lines it accepts from the traceback rule: for a known bug, named where it is used.
        """
        dsn = self.config.get("storage", {}).get("dsn", "")
        for index, run in enumerate(self.runs, 1):
            text = run.text()
            for secret in (ADMIN_TOKEN, API_TOKEN, CODE, HOOK_TOKEN, *dsn_passwords(dsn)):
                assert secret not in text, f"run {index}: a secret in the log"
            raw_lines = text.splitlines()
            for number, raw in enumerate(raw_lines, 1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    if run.killed and number == len(raw_lines):
                        continue  # the kill may cut the last line short
                    raise AssertionError(f"run {index}: a line that is not JSON: {raw!r}") from None
                if "Traceback" in raw and not (allow is not None and allow(line)):
                    raise AssertionError(f"run {index} of the bridge logged a traceback:\n{raw}")

    # --- admin API ---------------------------------------------------------------------

    async def admin(self, http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as resp:
            assert resp.status == 200, f"{path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def channel(self, http: aiohttp.ClientSession, channel_id: str = "acme") -> Any:
        body = await self.admin(http, "/admin/channels")
        return next(c for c in body["channels"] if c["id"] == channel_id)


# --- senders ---------------------------------------------------------------------------


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float = 10.0
) -> tuple[int, Any]:
    """One POST; (status, JSON body or text). Connection trouble raises (see TRANSIENT)."""
    async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@dataclass
class Tally:
    """What the senders saw: how often they had to retry, and with which answers."""

    ok: int = 0
    retries: int = 0
    answers: dict[str, int] = field(default_factory=dict)

    def saw(self, answer: str) -> None:
        self.answers[answer] = self.answers.get(answer, 0) + 1


async def until_200(
    call: Callable[[], Awaitable[tuple[int, Any]]],
    tally: Tally,
    *,
    what: str,
    timeout: float = 120.0,
    retry_on: Callable[[int, Any], bool] = lambda status, _: status >= 500,
) -> Any:
    """Send the same thing until it gets a 200, as a real sender that keeps its message does.

    Retries on a connection error, a timeout, and answers `retry_on` accepts (5xx by
    default); any other answer fails the test at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = await call()
        except TRANSIENT as exc:
            tally.saw(type(exc).__name__)
        else:
            if status == 200:
                tally.ok += 1
                return body
            tally.saw(str(status))
            if not retry_on(status, body):
                raise AssertionError(f"{what}: unexpected answer {status}: {body}")
        tally.retries += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: no 200 within {timeout} s; answers: {tally.answers}")
        await asyncio.sleep(RETRY_PAUSE)


async def together(*aws: Awaitable[Any]) -> list[Any]:
    """`asyncio.gather`, except that when one fails the others are cancelled, not left behind."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def user_message(message_id: str, chat_id: str, text: str) -> dict[str, Any]:
    """The messenger's `message` request, as the contract describes it."""
    return {
        "type": "message",
        "token": CODE,
        "data": {
            "externalMessageId": message_id,
            "externalChatId": chat_id,
            "externalUserId": f"user-{chat_id}",
            "text": text,
        },
    }
