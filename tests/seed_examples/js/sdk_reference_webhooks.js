import { J1MSKYClient } from 'j1msky';

const client = new J1MSKYClient();

// Register webhook
await client.registerWebhook({
  url: 'https://your-app.com/webhooks/j1msky',
  events: ['agent.completed', 'agent.failed'],
  secret: 'your_webhook_secret'
});

// Spawn with automatic webhook notification
const agent = await client.spawn({
  model: 'k2p5',
  task: 'Analyze data',
  webhookUrl: 'https://your-app.com/webhooks/j1msky'
});
