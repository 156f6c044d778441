"""Server-sent events carry `id:`, and Last-Event-ID resumes a dropped stream: the
events missed meanwhile are replayed, in order, then the stream goes on."""

from __future__ import annotations

import json

import httpx

from tests.integration.gateway.stack import Stack
from tests.support.vectors import dstack_create_task_json


def parse(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                fields[name] = value
        if fields:
            out.append(fields)
    return out


async def test_watch_events_have_ids_and_last_event_id_replays_what_was_missed(
    gateway_stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=gateway_stack.base_url, timeout=30) as http:
        created = await http.post("/api/v1/tasks", json=dstack_create_task_json())
        task_id = created.json()["id"]
        # A first connection: the state now, with its id; then the client drops.
        first_id = ""
        async with http.stream("GET", f"/api/v1/tasks/{task_id}:watch") as response:
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    first_id = line[4:]
                    break
        assert first_id.isdigit() and int(first_id) >= 1
        # While disconnected, the task is cancelled.
        await http.delete(f"/api/v1/tasks/{task_id}")
        # Resumed after the last id seen: the missed events come first, then the end.
        resumed = await http.get(
            f"/api/v1/tasks/{task_id}:watch", headers={"Last-Event-ID": first_id}
        )
        assert resumed.status_code == 200
        events = parse(resumed.text)
        data = [e for e in events if "data" in e and e.get("event") != "end"]
        assert data[0]["id"] == first_id  # the state at resumption, as of that id
        replayed = [json.loads(e["data"])["event"] for e in data[1:]]
        assert [int(e["id"]) for e in replayed] == sorted(int(e["id"]) for e in replayed)
        assert all(int(e["id"]) > int(first_id) for e in replayed)
        assert replayed[-1]["type"] == "cancelled"
        assert [d["id"] for d in data[1:]] == [str(e["id"]) for e in replayed]
        assert events[-1].get("event") == "end"

        # Without Last-Event-ID, a finished task's stream is its state and the end.
        plain = parse((await http.get(f"/api/v1/tasks/{task_id}:watch")).text)
        assert [e.get("event", "message") for e in plain] == ["message", "end"]

        bad = await http.get(f"/api/v1/tasks/{task_id}:watch", headers={"Last-Event-ID": "x1"})
        assert bad.status_code == 400
        assert "Last-Event-ID" in bad.text
