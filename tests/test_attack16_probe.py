async def test_probe(client):
    for q in ["page=9999999999999999&limit=1000", "page=9999999999999999&per_page=1000","page=9999999999999999&limit=100", "offset=9999999999999999999&limit=5", "page=999999999999999&limit=1000&sort=cost"]:
        r = await client.get("/api/agents?" + q)
        print(q, r.status, (await r.text())[:250])
