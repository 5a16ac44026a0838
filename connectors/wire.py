"""Reading JSON request bodies into pydantic models with errors that name the faulty field."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from bridge.core.errors import InvalidInput, error_path

M = TypeVar("M", bound=BaseModel)


class WireModel(BaseModel):
    # Tolerant reader: the other side may add fields at any time.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# An escaped UTF-16 surrogate (\ud800-\udfff): legal JSON, but alone it is no character and
# cannot be stored or sent on; only bodies that contain one pay for the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(body):
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("invalid_json", "the body holds an unpaired UTF-16 surrogate") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("invalid_json", "the body is not valid JSON") from None
    except RecursionError:  # nesting deep enough to exhaust the parser's stack
        raise InvalidInput("invalid_json", "the body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidInput("invalid_json", "the body must be a JSON object")
    return doc


def id_str(value: Any) -> Any:
    """Ids arrive as strings or numbers depending on the sender; the bridge keeps strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def validate(model: type[M], data: dict[str, Any], prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join([*([prefix] if prefix else []), *error_path(data, err["loc"])])
        if err["type"] == "missing":
            raise InvalidInput("missing_field", f"{where}: required") from None
        raise InvalidInput("invalid_field", f"{where}: {err['msg']}") from None


def null_as_empty(value: Any) -> Any:
    """An optional list or text sent as null means "none"."""
    return value if value is not None else []


def null_as_blank(value: Any) -> Any:
    return value if value is not None else ""


def null_as_default(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A field sent as null means its default (a status or a type left unsaid)."""
    if value is None and info.field_name is not None:
        return cls.model_fields[info.field_name].default
    return value


def empty_list_as_null(value: Any) -> Any:
    """PHP-style encoders write an empty object as `[]`."""
    return None if value == [] else value
