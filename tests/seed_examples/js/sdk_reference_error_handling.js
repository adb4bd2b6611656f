import { J1MSKYClient, RateLimitError, J1MSKYError } from 'j1msky';

const client = new J1MSKYClient();

try {
  const result = await client.spawn({ model: 'k2p5', task: 'Hello' });
} catch (error) {
  if (error instanceof RateLimitError) {
    console.log(`Rate limited. Retry after: ${error.retryAfter}s`);
    await sleep(error.retryAfter * 1000);
    // Retry...
  } else if (error instanceof J1MSKYError) {
    console.error(`API Error: ${error.message}`);
    console.error(`Request ID: ${error.requestId}`);
  }
}
