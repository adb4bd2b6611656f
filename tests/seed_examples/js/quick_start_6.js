const axios = require('axios');

const BASE_URL = 'http://localhost:8080/api';
const API_KEY = 'your_api_key_here';

const api = axios.create({
  baseURL: BASE_URL,
  headers: {
    'Authorization': `Bearer ${API_KEY}`,
    'Content-Type': 'application/json'
  }
});

async function spawnAndWait(task, model = 'k2p5', timeout = 300000) {
  // Spawn agent
  const { data: spawnData } = await api.post('/spawn', {
    model,
    task,
    priority: 'normal'
  });
  
  if (!spawnData.success) {
    throw new Error(`Spawn failed: ${spawnData.error}`);
  }
  
  const { agent_id } = spawnData;
  console.log(`Spawned agent: ${agent_id}`);
  
  // Poll for completion
  const startTime = Date.now();
  while (Date.now() - startTime < timeout) {
    const { data: status } = await api.get(`/agent/${agent_id}`);
    
    if (status.status === 'completed') {
      console.log(`‚úÖ Task completed in ${(Date.now() - startTime) / 1000}s`);
      return status;
    } else if (status.status === 'failed') {
      throw new Error(`Agent failed: ${status.error || 'Unknown error'}`);
    }
    
    await new Promise(r => setTimeout(r, 2000));
  }
  
  throw new Error(`Timeout after ${timeout}ms`);
}

// Usage
spawnAndWait('Generate a SQL query to find duplicate emails')
  .then(result => {
    console.log('Result:', result.result);
    console.log('Cost: $', result.cost);
  })
  .catch(console.error);
