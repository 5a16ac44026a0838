"""Typed settings: a TOML file, every key overridable from the environment.

`BRIDGE_<SECTION>__<KEY>` overrides `[section] key`, e.g. `BRIDGE_SERVER__PORT=9000` or
`BRIDGE_MESSENGERS__ACME__CONFIRMATION_CODE=...`. Problems are collected into a `ConfigError`
whose lines read `path.to.key: what is wrong`; the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.core.config import HttpUrl, RequiredSecret
from bridge.core.config import Section as _Section
from bridge.core.errors import error_path
from connectors.base import LiveChatSettingsBase
from connectors.chatvisor import ChatvisorSettings as ChatvisorSettings  # importable from here
from connectors.jivochat import JivochatSettings as JivochatSettings  # as before the registry
from connectors.registry import KINDS
from storage.pg_dsn import passwords as dsn_passwords
from storage.pg_dsn import redact as redact_dsn

CHANNEL_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class ConfigError(Exception):
    """One or more problems in the configuration, each `path.to.key: problem`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: HttpUrl = "http://127.0.0.1:8080"
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1024 * 1024)
    # Seconds a request's body may take to arrive in full; a sender that stalls gets a 408.
    read_timeout: float = Field(default=10.0, gt=0, le=600)
    # Files in one message, either way (400 `too_many_files` from a messenger; an operator's
    # reply keeps the first ones). JivoChat takes each file as a call of its own.
    max_files: int = Field(default=10, ge=1, le=100)
    # "auto": uvloop (a faster event loop, installed with the bridge) if it imports, else asyncio.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"


class StorageSettings(_Section):
    path: str = "var/bridge.sqlite3"
    # "full": every commit is fsynced before its 200, which survives a crash or kill of the
    # process, a power loss, a kernel crash and a disk turning read-only. "normal" survives
    # only the first two: a 200 may still be in the page cache (README, "Durability").
    synchronous: Literal["normal", "full"] = "full"
    # How long a write waits for a lock held by someone else before the request gets a 503.
    busy_timeout: float = Field(default=5.0, ge=0, le=600)
    # The WAL file's bound, in bytes: once it passes half of this, the writer restarts the log
    # between batches. Only a single batch of writes larger than half of it, or a reader from
    # outside holding an old snapshot, can take it past (logged at error).
    wal_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)
    # "sqlite": one process on one machine, the file at `path`. "postgres": any number of
    # replicas sharing one PostgreSQL server (13 or later) at `dsn`; `path`, `synchronous` and
    # `wal_max_bytes` then do not apply, and busy_timeout bounds the wait for a connection too.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    # PostgreSQL: a libpq connection URI or key=value string. A secret (its password is never
    # logged or shown); the password may instead come from PGPASSWORD or ~/.pgpass.
    dsn: SecretStr | None = None
    # PostgreSQL: connections each process keeps open, and at most opens (works run at once).
    pool_min: int = Field(default=2, ge=1, le=1000)
    pool_max: int = Field(default=10, ge=1, le=1000)


class AdminSettings(_Section):
    token: RequiredSecret


class DeliverySettings(_Section):
    connect_timeout: float = Field(default=5.0, gt=0)
    request_timeout: float = Field(default=15.0, gt=0)
    retry_base: float = Field(default=1.0, gt=0)
    retry_cap: float = Field(default=300.0, gt=0)
    give_up_after: float = Field(default=24 * 3600.0, gt=0)
    min_attempts: int = Field(default=5, ge=1)
    concurrency: int = Field(default=64, ge=1, le=1024)
    failures_before_interrupted: int = Field(default=3, ge=1)
    profile_ttl: float = Field(default=24 * 3600.0, ge=0)
    # Where the outside calls of deliveries run. "process": a child process, on another core,
    # so that acks never wait behind deliveries. "inline": in the serving process (also what a
    # ":memory:" database gets, which another process cannot open).
    worker: Literal["process", "inline"] = "process"
    # With worker = "process": once the delivery process has this many calls in flight (it is
    # falling behind), the serving process makes calls too. 0 (the default): never, so acks
    # never share the serving loop with deliveries. Measured with the wrk bench (README,
    # Performance): 0 against 8, ingest with deliveries on 1.34x against 0.59x of the
    # insert-and-commit baseline, end to end 0.30x against 0.22x, ack p99 8.8 against 19.6 ms.
    share_after: int = Field(default=0, ge=0, le=1024)
    # Replicas sharing a PostgreSQL database: seconds a replica's lease on a lane's item in
    # flight, or on a channel's reconnect attempts, lasts unless renewed (every third of it).
    # A replica that dies holds them this long before another takes over. Unused on SQLite.
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)


class RetentionSettings(_Section):
    """How long what is done is kept. Ages in days (0: keep forever); pruning runs in the
    background in small batches, each its own short write. Pending and dead outbox items,
    and whatever they refer to, are never pruned."""

    # Text and files of messages that are done (delivered, read, or failed with no dead item
    # kept); the row, its ids and its dedupe key stay.
    message_bodies: float = Field(default=30, ge=0)
    # Message rows themselves: a resend with the same externalMessageId is recognised as a
    # repeat for this long (and until its session is pruned).
    messages: float = Field(default=90, ge=0)
    events: float = Field(default=30, ge=0)
    # Closed sessions, counted from their closing, with their messages and transcript; then
    # their chat and user once no other session refers to them.
    closed_sessions: float = Field(default=90, ge=0)
    # Hours after which an operator's reply to a customer no chat is linked to becomes a dead
    # letter (0: it waits for its link forever).
    orphan_after: float = Field(default=24, ge=0)
    batch: int = Field(default=500, ge=1, le=10_000)  # rows per write
    pause: float = Field(default=0.05, ge=0, le=60)  # seconds between batches


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


# Each live-chat kind's settings model lives in its connector's module; the registry lists them.
if TYPE_CHECKING:
    LiveChatSettings = LiveChatSettingsBase
else:
    LiveChatSettings = Annotated[
        Union[tuple(kind.settings for kind in KINDS.values())],  # noqa: UP007 (built at run time)
        Field(discriminator="kind"),
    ]
LIVECHAT_KINDS = tuple(KINDS)


def _webhook_secret(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except ValueError:
        key = b""
    if not raw.startswith("whsec_") or not 16 <= len(key) <= 64:
        raise ValueError(
            "must be a Standard Webhooks secret: 'whsec_' and the base64 of 16 to 64 random"
            " bytes (e.g. python -c \"import os,base64;print('whsec_'+base64.b64encode("
            'os.urandom(32)).decode())")'
        )
    return value


def _event_names(value: Any) -> Any:
    names_ok = isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
    if value != "*" and not names_ok:
        raise ValueError('must be "*" or a non-empty list of event names')
    return value


class SubscriptionSettings(_Section):
    url: HttpUrl
    secret: Annotated[SecretStr, AfterValidator(_webhook_secret)]
    events: Annotated[Literal["*"] | list[str], BeforeValidator(_event_names)]
    livechat: str | None = None
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None

    @property
    def key(self) -> str:
        """Stable id of this subscription: its `id`, else derived from its URL."""
        return self.id or hashlib.sha256(self.url.encode()).hexdigest()[:12]

    def wants(self, livechat_id: str, event: str) -> bool:
        if self.livechat is not None and self.livechat != livechat_id:
            return False
        return self.events == "*" or event in self.events


class MessengerSettings(_Section):
    name: str = Field(min_length=1)
    livechat: str
    webhook: HttpUrl
    # Required key, but may be empty: then any token is accepted (warned about at start-up).
    confirmation_code: SecretStr
    operator_sessions: bool = True
    enabled: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    admin: AdminSettings
    delivery: DeliverySettings = DeliverySettings()
    logging: LoggingSettings = LoggingSettings()
    retention: RetentionSettings = RetentionSettings()
    livechats: dict[str, LiveChatSettings] = {}
    messengers: dict[str, MessengerSettings] = {}
    subscriptions: list[SubscriptionSettings] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The constructor receives the TOML file's contents; the environment overrides them.
        return (env_settings, init_settings)

    def secrets(self) -> list[str]:
        """Every secret value configured, for the log redactor."""
        values = [self.admin.token.get_secret_value()]
        for lc in self.livechats.values():
            values += lc.secret_values()
        values += [m.confirmation_code.get_secret_value() for m in self.messengers.values()]
        values += [sub.secret.get_secret_value() for sub in self.subscriptions]
        if self.storage.dsn is not None:
            dsn = self.storage.dsn.get_secret_value()
            values += [dsn, *dsn_passwords(dsn)]
        return [v for v in values if v]


EXAMPLE_SECRET_MARK = "change-me"  # noqa: S105 (a marker looked for, not a secret)


def config_warnings(settings: Settings) -> list[str]:
    """What works but should not stay so, each `path.to.key: why` (never a secret's value):
    printed by `check-config` (exit code 0) and logged at start-up."""
    found = []
    named: list[tuple[str, SecretStr]] = [("admin.token", settings.admin.token)]
    for lc_id, lc in settings.livechats.items():
        named += [(f"livechats.{lc_id}.{key}", secret) for key, secret in lc.named_secrets()]
    for m_id, messenger in settings.messengers.items():
        code = messenger.confirmation_code
        if not code.get_secret_value():
            found.append(
                f"messengers.{m_id}.confirmation_code: empty, so any token is accepted from this"
                " messenger; set the code the messenger sends"
            )
        named.append((f"messengers.{m_id}.confirmation_code", code))
    for index, sub in enumerate(settings.subscriptions):
        named.append((f"subscriptions.{index}.secret", sub.secret))
    for path, secret in named:
        if EXAMPLE_SECRET_MARK in secret.get_secret_value().lower():
            found.append(
                f"{path}: still the example's placeholder ('{EXAMPLE_SECRET_MARK}...'); set a secret of your own"
            )
    return found


def resolve_config_path(explicit: str | None) -> Path:
    """`--config`, else `$BRIDGE_CONFIG`, else `./config.toml`, else `config.example.toml`."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("BRIDGE_CONFIG"):
        return Path(env)
    local = Path("config.toml")
    return local if local.exists() else Path("config.example.toml")


def load_settings(path: Path) -> Settings:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return settings_from_dict(raw)


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    """Validate a parsed TOML document with the environment's overrides. Raises ConfigError
    listing every problem as `path.to.key: problem`; a key set by the environment names its
    variable."""
    env = _env_overrides(os.environ)
    # Every problem in one run: what the pre-check finds is left out of what pydantic then
    # validates, and the cross-checks run once the rest is valid.
    problems, checked, dropped = _precheck(raw)
    settings: Settings | None = None
    try:
        settings = Settings(**checked)
    except ValidationError as exc:
        document = _with_overrides(checked, env)
        problems += _merge([_format_error(checked, document, env, err) for err in exc.errors()])
    if settings is not None:
        problems += [
            problem
            for problem in _cross_check(settings)
            if not any(f"unknown live chat {lc_id!r}" in problem for lc_id in dropped)
        ]
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


ENV_PREFIX = "BRIDGE_"
ENV_NOT_SETTINGS = {"BRIDGE_CONFIG"}  # the config file's path, read by the CLI


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Each `BRIDGE_<SECTION>__<KEY>` variable as the path it sets, as pydantic-settings reads
    it (prefix and names without regard to case, `__` between levels): path -> variable name."""
    found = {}
    for name in environ:
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in ENV_NOT_SETTINGS:
            parts = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
            if all(parts):
                found[parts] = name
    return found


def _with_overrides(raw: dict[str, Any], env: dict[tuple[str, ...], str]) -> dict[str, Any]:
    """The TOML document with a placeholder wherever the environment sets a key: what the
    sender of the settings wrote, for naming an error's path."""
    document: dict[str, Any] = _copy_tree(raw)
    for parts in env:
        node = document
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node.setdefault(parts[-1], "(from the environment)")
    return document


def _copy_tree(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _copy_tree(value) for key, value in node.items()}
    return node


def _precheck(raw: dict[str, Any]) -> tuple[list[str], dict[str, Any], set[str]]:
    """Problems pydantic would report obscurely, or not at all: top-level keys that
    pydantic-settings would take as options of its own (`_env_prefix`...), and a live chat
    whose kind is missing or unknown. Returns them, the document without what they name (for
    the rest to be checked), and the ids of the live chats left out."""
    problems = [
        f"{key or repr(key)}: unknown key" for key in raw if key not in Settings.model_fields
    ]
    checked = {key: value for key, value in raw.items() if key in Settings.model_fields}
    dropped: set[str] = set()
    livechats = checked.get("livechats", {})
    if isinstance(livechats, dict):
        for lc_id, lc in livechats.items():
            if isinstance(lc, dict) and "kind" not in lc:
                problems.append(f"livechats.{lc_id}.kind: required key is missing")
                dropped.add(lc_id)
            elif isinstance(lc, dict) and lc["kind"] not in LIVECHAT_KINDS:
                known = ", ".join(LIVECHAT_KINDS)
                problems.append(
                    f"livechats.{lc_id}.kind: unknown kind {lc['kind']!r} (known: {known})"
                )
                dropped.add(lc_id)
        if dropped:
            checked["livechats"] = {k: v for k, v in livechats.items() if k not in dropped}
    return problems, checked, dropped


def _merge(problems: list[str]) -> list[str]:
    """One line per key: a union's members each explain themselves, joined with "or"."""
    merged: dict[str, list[str]] = {}
    for problem in problems:
        path, _, message = problem.partition(": ")
        if message not in merged.setdefault(path, []):
            merged[path].append(message)
    return [f"{path}: {' or '.join(messages)}" for path, messages in merged.items()]


def _format_error(
    raw: dict[str, Any], document: dict[str, Any], env: dict[tuple[str, ...], str], err: Any
) -> str:
    parts = error_path(document, err["loc"])
    path = ".".join(parts) or "(top level)"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        message = "required key is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{path}: {message}{_env_note(raw, tuple(parts), env)}"


def _env_note(raw: dict[str, Any], parts: tuple[str, ...], env: dict[tuple[str, ...], str]) -> str:
    """Which environment variable a problem comes from: the one that set the key itself; else,
    for a section only the environment made (it misses every key the environment did not
    give), the variables that made it."""
    if parts in env:
        return f" (set by {env[parts]})"
    section = parts[:-1]
    if not section or _in_document(raw, section):
        return ""
    makers = sorted(name for path, name in env.items() if path[: len(section)] == section)
    return f" ({'.'.join(section)} is made by {', '.join(makers)})" if makers else ""


def _in_document(document: Any, parts: tuple[str, ...]) -> bool:
    node = document
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _unknown_livechat(path: str, name: str, settings: Settings) -> str:
    known = ", ".join(sorted(settings.livechats)) or "none configured"
    return f"{path}.livechat: unknown live chat {name!r} (known: {known})"


def _storage_path_problem(path: str) -> str | None:
    """Why the bridge could not create or open its SQLite file at `path`, or None."""
    if path == ":memory:":
        return None
    target = Path(path)
    if target.is_dir():
        return (
            f"storage.path: {path} is a folder; name a file in it, e.g. {target / 'bridge.sqlite3'}"
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"storage.path: {parent} is a file, so {path} cannot be created under it"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"storage.path: the folder {parent} is not writable by this user"
            break
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        return f"storage.path: {path} is not readable and writable by this user"
    return None


def _storage_backend_problems(storage: StorageSettings) -> list[str]:
    """What keeps `[storage]` from naming one database: a PostgreSQL DSN missing, malformed
    (checked by libpq's own parser, the password masked in what it says) or set for SQLite;
    pool sizes the wrong way round."""
    dsn = storage.dsn.get_secret_value().strip() if storage.dsn is not None else ""
    if storage.backend == "sqlite":
        if dsn:
            return [
                'storage.dsn: set, but storage.backend is "sqlite"; set backend = "postgres"'
                " to use it, or remove it"
            ]
        return []
    problems = []
    if storage.pool_min > storage.pool_max:
        problems.append(f"storage.pool_min: more than storage.pool_max ({storage.pool_max})")
    if not dsn:
        problems.append(
            'storage.dsn: required with backend = "postgres" (a libpq URI such as'
            " postgresql://bridge@db.example:5432/bridge; the password in it, in PGPASSWORD"
            " or in ~/.pgpass)"
        )
        return problems
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        problems.append(
            'storage.backend: "postgres" needs the PostgreSQL driver:'
            " pip install 'messenger-bridge[postgres]'"
        )
        return problems
    try:
        conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError: libpq could not parse it
        problems.append(f"storage.dsn: not a libpq connection string: {redact_dsn(str(exc), dsn)}")
    return problems


def _cross_check(settings: Settings) -> list[str]:
    problems = []
    problems += _storage_backend_problems(settings.storage)
    if settings.storage.backend == "sqlite" and (
        storage_problem := _storage_path_problem(settings.storage.path)
    ):
        problems.append(storage_problem)
    for section, ids in (("livechats", settings.livechats), ("messengers", settings.messengers)):
        for key in ids:
            if not CHANNEL_ID.fullmatch(key):
                problems.append(
                    f"{section}.{key}: id must be 1-64 of a-z, 0-9, '_' or '-', starting with a"
                    " letter or digit (it is part of a URL)"
                )
    seen_webhooks: dict[str, str] = {}
    for m_id, messenger in settings.messengers.items():
        if messenger.livechat not in settings.livechats:
            problems.append(_unknown_livechat(f"messengers.{m_id}", messenger.livechat, settings))
        # One messenger account belongs to one live chat: the same webhook twice is one account.
        if (other := seen_webhooks.get(messenger.webhook)) is not None:
            problems.append(
                f"messengers.{m_id}.webhook: same webhook as messengers.{other}"
                " (one messenger account can be connected to only one live chat)"
            )
        else:
            seen_webhooks[messenger.webhook] = m_id
    seen_keys: dict[str, int] = {}
    for index, sub in enumerate(settings.subscriptions):
        if sub.livechat is not None and sub.livechat not in settings.livechats:
            problems.append(_unknown_livechat(f"subscriptions.{index}", sub.livechat, settings))
        if (other_index := seen_keys.get(sub.key)) is not None:
            problems.append(
                f"subscriptions.{index}: same id as subscriptions.{other_index}"
                " (two subscriptions to one URL need distinct `id`s)"
            )
        seen_keys[sub.key] = index
    return problems
