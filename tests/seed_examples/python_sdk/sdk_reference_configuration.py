from j1msky import J1MSKYClient, Config

config = Config(
    base_url="http://localhost:8080",
    api_key="your_key",
    timeout=30,
    max_retries=3,
    retry_delay=1.0,
    cache_enabled=True,
    cache_ttl=60
)

client = J1MSKYClient(config=config)
