quotes = client.get_batch_quotes(
    model="k2p5",
    complexities=["low", "medium", "high"],
    segments=["smb", "mid_market", "enterprise"]
)
