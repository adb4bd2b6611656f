from tests.conftest import wait_status


async def test_spawn_and_complete(client):
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "Write a Python function to reverse a string",
                                                 "priority": "normal"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True and body["status"] == "spawning" and body["model"] == "k2p5"
    done = await wait_status(client, body["agent_id"])
    assert done["status"] == "completed", done
    assert "offline" in done["result"]
    assert done["cost"] > 0
