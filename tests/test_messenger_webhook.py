"""The messenger's side of the contract: status codes, error bodies, duplicates, concurrency."""

from __future__ import annotations

import asyncio
import json

from tests import stored
from tests.conftest import CODE, World, eventually


def url(world: World, channel: str = "acme") -> str:
    assert world.bridge is not None
    return f"{world.bridge.url}/messengers/{channel}/webhook"


def message(
    mid: str = "e1", chat: str = "c1", text: str = "hi", token: str = CODE
) -> dict[str, object]:
    return {
        "type": "message",
        "token": token,
        "data": {
            "externalMessageId": mid,
            "externalChatId": chat,
            "externalUserId": "u1",
            "text": text,
        },
    }


async def post(
    world: World, body: object, channel: str = "acme", raw: bytes | None = None
) -> tuple[int, dict[str, str]]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with world.http.post(
        url(world, channel), data=data, headers={"Content-Type": "application/json"}
    ) as r:
        return r.status, await r.json()


async def test_unknown_channel_is_404(running: World) -> None:
    assert await post(running, message(), channel="nope") == (
        404,
        {"error": "no messenger channel with this id", "errcode": "unknown_channel"},
    )


async def test_wrong_or_missing_token_is_401_and_does_not_echo_it(running: World) -> None:
    status, body = await post(running, message(token="guess"))
    assert status == 401 and body["errcode"] == "bad_token"
    assert "guess" not in json.dumps(body) and CODE not in json.dumps(body)
    body_without = message()
    del body_without["token"]
    assert (await post(running, body_without))[0] == 401


async def test_malformed_bodies_are_400(running: World) -> None:
    cases = [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (json.dumps({"token": CODE}).encode(), "missing_field"),
    ]
    for raw, errcode in cases:
        status, body = await post(running, None, raw=raw)
        assert (status, body["errcode"]) == (400, errcode), raw


async def test_missing_fields_are_named(running: World) -> None:
    body = message()
    del body["data"]["externalChatId"]  # type: ignore[attr-defined]
    assert await post(running, body) == (
        400,
        {"error": "data.externalChatId: required", "errcode": "missing_field"},
    )
    empty = message(text="")
    assert (await post(running, empty))[1]["errcode"] == "empty_message"
    bad_files = message()
    bad_files["data"]["files"] = [{"name": "x"}]  # type: ignore[index]
    assert (await post(running, bad_files))[1] == {
        "error": "data.files.0.URL: required",
        "errcode": "missing_field",
    }
    unknown = {"type": "explode", "token": CODE}
    assert (await post(running, unknown))[1]["errcode"] == "unknown_type"


async def test_oversized_body_is_413(running: World) -> None:
    status, body = await post(running, message(text="x" * 70_000))
    assert status == 413 and body["errcode"] == "body_too_large"


async def test_type_is_case_insensitive_and_ids_may_be_numbers(running: World) -> None:
    body = {
        "type": "MESSAGE",
        "token": CODE,
        "data": {"externalMessageId": 42, "externalChatId": 7, "externalUserId": 9, "text": "n"},
    }
    assert (await post(running, body))[0] == 200
    await eventually(lambda: running.chatvisor.all_texts() == ["n"], what="delivered")


async def test_duplicate_message_is_accepted_once(running: World) -> None:
    for _ in range(3):
        assert (await post(running, message("dup-1")))[0] == 200
    customer = await running.customer_id("c1")
    await eventually(lambda: running.chatvisor.texts(customer) == ["hi"], what="one message")
    await asyncio.sleep(0.1)
    assert running.chatvisor.texts(customer) == ["hi"]
    assert await stored.count_messages(running.bridge.store) == 1


async def test_concurrent_duplicates_and_first_messages_make_one_session(running: World) -> None:
    bodies = [message("same", chat="new-chat") for _ in range(10)]
    bodies += [message(f"other-{i}", chat="new-chat") for i in range(10)]
    results = await asyncio.gather(*(post(running, b) for b in bodies))
    assert all(status == 200 for status, _ in results)
    assert len(await stored.sessions(running.bridge.store)) == 1
    assert await stored.count_messages(running.bridge.store) == 11


async def test_wrong_method_and_unknown_path_are_json(running: World) -> None:
    async with running.http.get(url(running)) as r:
        assert r.status == 405 and (await r.json())["errcode"] == "method_not_allowed"
    async with running.http.get(f"{running.bridge.url}/nowhere") as r:
        assert r.status == 404 and (await r.json())["errcode"] == "not_found"


async def test_mark_as_read_from_the_messenger(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "c9", "hi")
    customer = await running.customer_id("c9")
    await cv.agent_reply(http, customer, "hello")
    await eventually(lambda: m.messages, what="reply")
    (uid,) = m.messages
    for kind in ("markAsRead", "MarkMessageAsRead"):
        assert await m.send(http, kind, {"messageId": uid}) == (200, {"result": "ok"})
    messages = await stored.all_messages(running.bridge.store)
    assert [m["status"] for m in messages if m["uid"] == uid] == ["read"]


async def test_empty_confirmation_code_accepts_any_token(world: World) -> None:
    world.messenger.code = ""
    await world.start_bridge(
        messengers={"acme": {**world.config()["messengers"]["acme"], "confirmation_code": ""}}
    )
    assert (await post(world, message(token="anything")))[0] == 200


async def test_json_that_cannot_be_stored_or_sent_on_is_400(running: World) -> None:
    bodies = [
        rb'{"type": "message", "token": "t", "data": {"text": "\ud800"}}',  # a lone surrogate
        b'{"type": "message", "token": "t", "data": {"n": NaN}}',
        b'{"type": "message", "token": "t", "data": {"n": 1e999}}',
        b"[" * 50_000,  # under the test config's 64 KiB limit, deep enough for RecursionError
    ]
    for raw in bodies:
        for target in (url(running), running.bridge.hook_url()):
            async with running.http.post(target, data=raw) as r:
                assert (r.status, (await r.json())["errcode"]) == (400, "invalid_json"), raw[:40]
