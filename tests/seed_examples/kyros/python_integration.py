import requests
import json
from typing import Dict, Any

class KyrosClient:
    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url.rstrip('/')
        self.api_key = api_key
        self.session = requests.Session()
        self.session.headers.update({
            'Authorization': f'Bearer {api_key}',
            'Content-Type': 'application/json'
        })
    
    def create_task(self, task_data: Dict[str, Any]) -> Dict[str, Any]:
        """Create a new task"""
        response = self.session.post(
            f'{self.base_url}/v1/tasks',
            json=task_data
        )
        response.raise_for_status()
        return response.json()
    
    def submit_to_agent(self, role: str, task_id: str, context: Dict[str, Any]) -> Dict[str, Any]:
        """Submit task to specific agent"""
        response = self.session.post(
            f'{self.base_url}/v1/agents/{role}/submit',
            json={
                'task_id': task_id,
                'context': context
            }
        )
        response.raise_for_status()
        return response.json()
    
    def get_task_status(self, task_id: str) -> Dict[str, Any]:
        """Get task status"""
        response = self.session.get(f'{self.base_url}/v1/tasks/{task_id}')
        response.raise_for_status()
        return response.json()
    
    def request_escalation(self, task_id: str, reason: str) -> Dict[str, Any]:
        """Request task escalation"""
        response = self.session.post(
            f'{self.base_url}/v1/escalation/submit',
            json={
                'task_id': task_id,
                'reason': reason
            }
        )
        response.raise_for_status()
        return response.json()

# Usage example
client = KyrosClient('https://api.kyros.com', 'your-api-key')

# Create a task
task = client.create_task({
    'title': 'Implement user authentication',
    'description': 'Add JWT authentication with OAuth2',
    'type': 'implementation',
    'priority': 'high',
    'assignee_role': 'implementer'
})

# Submit to agent
submission = client.submit_to_agent(
    'implementer',
    task['data']['id'],
    {'repository_state': 'main branch at abc123'}
)

# Monitor progress
while True:
    status = client.get_task_status(task['data']['id'])
    print(f"Task status: {status['data']['status']}")
    if status['data']['status'] in ['completed', 'failed']:
        break
    time.sleep(30)
