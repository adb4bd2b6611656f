import { J1MSKYClient } from 'j1msky';

const client = new J1MSKYClient({
  baseUrl: 'http://localhost:8080',
  apiKey: 'your_api_key'
});

// Spawn an agent
const agent = await client.spawn({
  model: 'k2p5',
  task: 'Write a JavaScript function to reverse a string',
  priority: 'normal'
});

// Poll for completion
const result = await agent.waitForCompletion({ timeout: 300000 });
console.log(result.output);
console.log(`Cost: $${result.cost}`);
