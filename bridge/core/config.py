"""Building blocks of the settings models, shared by bridge/settings.py and each live-chat
kind's own settings model in connectors/ (which may not import bridge.settings)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr
from yarl import URL

from bridge.core.contacts import known_region


class Section(BaseModel):
    """A settings section: unknown keys refused, values frozen, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def http_url(value: str) -> str:
    """`value` without a trailing "/"; raises ValueError unless it is an absolute http(s) URL."""
    if any(ch.isspace() for ch in value):
        raise ValueError("must be an absolute http:// or https:// URL (it contains white space)")
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(http_url)]


def _not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


RequiredSecret = Annotated[SecretStr, AfterValidator(_not_blank)]


def phone_region(value: str) -> str:
    """`value` upper-cased; raises ValueError unless phone numbers can be read in it."""
    region = value.strip().upper()
    if not known_region(region):
        raise ValueError(
            f'unknown region {value!r} (a two-letter ISO 3166 country code such as "RU" or'
            ' "US", or leave the key out)'
        )
    return region


PhoneRegion = Annotated[str, AfterValidator(phone_region)]
