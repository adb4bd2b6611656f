import requests
from requests.exceptions import RequestException, Timeout

def robust_api_call(method, endpoint, max_retries=3, **kwargs):
    """Make an API call with retry logic."""
    url = f"{BASE_URL}{endpoint}"
    
    for attempt in range(max_retries):
        try:
            response = requests.request(
                method, url,
                headers=HEADERS,
                timeout=30,
                **kwargs
            )
            
            # Handle rate limiting
            if response.status_code == 429:
                retry_after = int(response.headers.get('Retry-After', 60))
                print(f"Rate limited. Waiting {retry_after}s...")
                time.sleep(retry_after)
                continue
            
            response.raise_for_status()
            data = response.json()
            
            # Check API-level errors
            if not data.get('success', True):
                raise Exception(f"API error: {data.get('error')}")
            
            return data
            
        except Timeout:
            wait = 2 ** attempt
            print(f"Timeout. Retrying in {wait}s...")
            time.sleep(wait)
        except RequestException as e:
            if attempt == max_retries - 1:
                raise
            wait = 2 ** attempt
            print(f"Request failed: {e}. Retrying in {wait}s...")
            time.sleep(wait)
    
    raise Exception("Max retries exceeded")

# Usage
try:
    result = robust_api_call('POST', '/spawn', 
                           json={'model': 'k2p5', 'task': 'Hello world'})
    print(f"Success: {result}")
except Exception as e:
    print(f"Failed: {e}")
