"""The bridge's own errors: what is wrong with something a sender wrote, in no protocol's terms.

A connector that cannot read a body, or the relay refusing a message, raises `InvalidInput`;
the web layer (bridge/web/common.py's error middleware, the console's guard) answers it as a
400 with the body `{"error": message, "errcode": errcode}`. Nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class InvalidInput(Exception):
    """Input that cannot be taken as it is. `errcode`: a stable machine name (README, "Error
    codes", e.g. `invalid_json`, `missing_field`, `too_many_files`); `message`: for people,
    naming the faulty field as `path.to.field: what is wrong`, never a secret."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.message = message


def error_path(data: Any, loc: Sequence[int | str]) -> list[str]:
    """A validation error's location as the sender wrote it.

    Pydantic puts the name of a union's member into the location (`literal['*']`,
    `dict[str,any]`, a model's tag); the sender's document has no such level, so a part that
    is not a key or index of the data at that point is left out, unless it is the last part
    and its parent an object: then it names a missing key.
    """
    path: list[str] = []
    node = data
    for index, part in enumerate(loc):
        found, child = _child(node, part)
        missing_key = (
            isinstance(node, dict)
            and index == len(loc) - 1
            and isinstance(part, str)
            and part.isidentifier()
        )
        if not found and not missing_key:
            continue
        node = child
        path.append(str(part))
    return path


def _child(node: Any, part: int | str) -> tuple[bool, Any]:
    if isinstance(node, dict) and part in node:
        return True, node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None
