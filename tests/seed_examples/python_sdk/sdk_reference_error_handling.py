from j1msky import J1MSKYClient, J1MSKYError, RateLimitError

client = J1MSKYClient()

try:
    result = client.spawn(model="k2p5", task="Hello world")
except RateLimitError as e:
    print(f"Rate limited. Retry after: {e.retry_after}s")
    time.sleep(e.retry_after)
    result = client.spawn(model="k2p5", task="Hello world")
except J1MSKYError as e:
    print(f"API Error: {e.message}")
    print(f"Request ID: {e.request_id}")  # For support
