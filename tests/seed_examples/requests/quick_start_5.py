import requests
import time

# Configuration
BASE_URL = "http://localhost:8080/api"
API_KEY = "your_api_key_here"
HEADERS = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json"
}

def spawn_and_wait(task: str, model: str = "k2p5", timeout: int = 300) -> dict:
    """Spawn an agent and wait for completion."""
    
    # Spawn the agent
    spawn_resp = requests.post(
        f"{BASE_URL}/spawn",
        headers=HEADERS,
        json={"model": model, "task": task, "priority": "normal"}
    )
    spawn_resp.raise_for_status()
    data = spawn_resp.json()
    
    if not data.get("success"):
        raise Exception(f"Spawn failed: {data.get('error')}")
    
    agent_id = data["agent_id"]
    print(f"Spawned agent: {agent_id}")
    
    # Poll for completion
    start_time = time.time()
    while time.time() - start_time < timeout:
        status_resp = requests.get(
            f"{BASE_URL}/agent/{agent_id}",
            headers=HEADERS
        )
        status = status_resp.json()
        
        if status.get("status") == "completed":
            print(f"‚úÖ Task completed in {time.time() - start_time:.1f}s")
            return status
        elif status.get("status") == "failed":
            raise Exception(f"Agent failed: {status.get('error', 'Unknown error')}")
        
        time.sleep(2)
    
    raise TimeoutError(f"Agent didn't complete within {timeout}s")

# Usage
if __name__ == "__main__":
    result = spawn_and_wait("Write a fibonacci function in Python")
    print(f"Result: {result.get('result', 'No result')}")
    print(f"Cost: ${result.get('cost', 0)}")
