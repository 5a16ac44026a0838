"""Files: at most `server.max_files` a message either way, and a message JivoChat takes as several
calls (one per file, then the caption) resumes after the parts already delivered."""

from __future__ import annotations

from typing import Any

from tests import stored
from tests.conftest import Jivo, World, eventually


def files(n: int, prefix: str = "f", url_key: str = "URL") -> list[dict[str, Any]]:
    """Messenger file objects (`URL`), or Chatvisor's (`url`)."""
    return [
        {"name": f"{prefix}{i}.pdf", url_key: f"https://files.example/{prefix}{i}.pdf"}
        for i in range(n)
    ]


async def test_a_messenger_message_with_too_many_files_is_refused(world: World) -> None:
    await world.start_bridge(server={"max_files": 3})
    m, cv = world.messenger, world.chatvisor
    status, body = await m.send_message(world.http, "many", "", message_id="m-4", files=files(4))
    assert (status, body["errcode"]) == (400, "too_many_files")
    assert world.bridge is not None
    assert await stored.count_messages(world.bridge.store) == 0
    status, _ = await m.send_message(world.http, "many", "three", message_id="m-3", files=files(3))
    assert status == 200
    await eventually(lambda: m.outcomes.get("m-3") is True, what="three files delivered")
    (sent,) = [msg for conv in cv.conversations.values() for msg in conv]
    assert len(sent["files"]) == 3


async def test_an_operator_reply_with_too_many_files_keeps_the_first_and_records_the_rest(
    world: World,
) -> None:
    bridge = await world.start_bridge(server={"max_files": 3})
    m, cv = world.messenger, world.chatvisor
    await m.send_message(world.http, "op", "hello", message_id="op-1")
    customer = await world.customer_id("op")
    status, _ = await cv.agent_reply(
        world.http, customer, "here you are", files=files(5, "r", "url")
    )
    assert status == 200  # never refused: the live chat might not send it again
    await eventually(lambda: m.chat_log["op"] == ["here you are"], what="the reply")
    (reply,) = m.messages.values()
    assert [f["name"] for f in reply["files"]] == ["r0.pdf", "r1.pdf", "r2.pdf"]
    rows = await stored.event_list(bridge.store, "message.files_dropped")
    (payload,) = [r["payload"] for r in rows]
    assert payload["kept"] == 3 and payload["chat_id"] == "op"
    assert [f["url"] for f in payload["dropped"]] == [
        "https://files.example/r3.pdf",
        "https://files.example/r4.pdf",
    ]


async def test_a_multi_part_message_resumes_after_the_delivered_parts(
    world: World, jivo: Jivo
) -> None:
    refused: set[str] = set()

    def second_part_fails_once(body: dict[str, Any]) -> int | None:
        part_id = body["message"]["id"]
        if part_id.endswith("-1") and part_id not in refused:
            refused.add(part_id)
            return 503
        return None

    jivo.sim.refuse = second_part_fails_once
    await jivo.start()
    sent = files(3)
    await jivo.user_says("parts", "the caption", message_id="p-1", files=sent)
    m = world.messenger
    await eventually(lambda: m.outcomes.get("p-1") is True, what="delivered after the retry")
    parts = [b["message"] for b in jivo.sim.client_messages]
    uid = parts[0]["id"]
    ids = [uid, f"{uid}-1", f"{uid}-2", f"{uid}-3"]
    assert [p["id"] for p in parts] == ids  # each once, in order
    assert [p.get("file") for p in parts] == [f["URL"] for f in sent] + [None]
    assert parts[3] == {"type": "text", "id": f"{uid}-3", "text": "the caption"}
    # The retry started at the refused part: the one before it was not sent again.
    assert dict(jivo.sim.calls_by_id) == {ids[0]: 1, ids[1]: 2, ids[2]: 1, ids[3]: 1}
    assert jivo.sim.duplicates == 0


async def test_a_part_refused_for_good_keeps_its_place_for_a_retry(
    world: World, jivo: Jivo
) -> None:
    jivo.sim.refuse = lambda body: 400 if body["message"]["id"].endswith("-2") else None
    await jivo.start()
    await jivo.user_says("dead", "", message_id="d-1", files=files(4))
    await eventually(lambda: world.messenger.outcomes.get("d-1") is False, what="failure outcome")
    assert world.bridge is not None
    (dead,) = await stored.outbox_items(world.bridge.store, "dead")
    assert dead["payload"]["parts_done"] == 2  # an admin's retry starts at the third
    assert len(jivo.sim.client_messages) == 2


async def test_an_agent_typing_is_recorded_not_an_error(world: World, jivo: Jivo) -> None:
    await jivo.start()
    await jivo.user_says("typing", "hello")
    await eventually(lambda: jivo.sim.texts("acme:typing") == ["hello"], what="at JivoChat")
    status, body = await jivo.sim.post(
        jivo.http, {"recipient": {"id": "acme:typing"}, "message": {"type": "typein"}}
    )
    assert (status, body) == (200, {"result": "ok"})
    assert world.bridge is not None
    rows = await stored.event_list(world.bridge.store)
    assert [(e["name"], e["session_id"] is not None) for e in rows] == [("chat_api.typein", True)]
    assert world.messenger.count("message") == 0  # the messenger protocol has no typing message


async def test_a_resend_after_a_part_refused_for_good_starts_at_that_part(
    world: World, jivo: Jivo
) -> None:
    """The messenger resends a message whose delivery failed part way (it was told `success:
    false`): the parts JivoChat already took are not sent again."""
    refusing = True
    jivo.sim.refuse = lambda body: (
        400 if refusing and body["message"]["id"].endswith("-1") else None
    )
    await jivo.start()
    sent = files(2)
    await jivo.user_says("again", "caption", message_id="a-1", files=sent)
    m = world.messenger
    await eventually(lambda: m.outcomes.get("a-1") is False, what="failure outcome")
    refusing = False
    await jivo.user_says("again", "caption", message_id="a-1", files=sent)
    await eventually(lambda: m.outcomes.get("a-1") is True, what="the resend delivered")
    uid = jivo.sim.client_messages[0]["message"]["id"]
    assert dict(jivo.sim.calls_by_id) == {uid: 1, f"{uid}-1": 2, f"{uid}-2": 1}
    assert [b["message"]["id"] for b in jivo.sim.client_messages] == [uid, f"{uid}-1", f"{uid}-2"]
