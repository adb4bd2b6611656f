// Compiled (never run) by tests/test_sdk_js.py with `tsc --strict --noEmit` when TypeScript is at
// hand: the reference's SDK examples and the rest of the API type-check against index.d.ts.
import sdk, { Agency, J1MSKYClient, J1MSKYError, RateLimitError, type AgentResult, type Quote } from 'j1msky';

async function main(): Promise<void> {
  const client = new J1MSKYClient({ baseUrl: 'http://localhost:8080', apiKey: 'your_api_key', maxRetries: 5, retryDelay: 1000 });
  const agent = await client.spawn({ model: 'k2p5', task: 'Write a JavaScript function', priority: 'normal', webhookUrl: 'https://example.invalid/hook' });
  const result: AgentResult = await agent.waitForCompletion({ timeout: 300000 });
  const text: string | null = result.output;
  const cost: number | null = result.cost;
  console.log(text, cost, result.state, agent.id);
  const lead = await new Agency().spawnTeam({ team: 'team_coding', task: 'Build' });
  console.log((await client.getAgentStatus(lead.id)).state);
  const quote: Quote = await client.getQuote({ model: 'sonnet', estimatedInputTokens: 3000, estimatedOutputTokens: 1200, complexity: 'high', segment: 'enterprise' });
  const compliant: boolean = quote.guardrailCheck.isCompliant && quote.guardrail_check.is_compliant;
  console.log(quote.internalCost + quote.recommended_price, compliant);
  await client.registerWebhook({ url: 'https://example.invalid/hook', events: ['agent.completed'], secret: 'your_webhook_secret' });
  try {
    await client.spawn({ model: 'k2p5', task: 'Hello' });
  } catch (error) {
    if (error instanceof RateLimitError) {
      const seconds: number | null = error.retryAfter;
      console.log(seconds);
    } else if (error instanceof J1MSKYError) {
      const id: string | null = error.requestId;
      console.log(error.message, id, error.status, error.type);
    }
  }
  console.log(sdk.VERSION, new sdk.Agency() instanceof J1MSKYClient);
}

// Misuse the declarations must refuse (tsc reports an unused @ts-expect-error as an error).
// @ts-expect-error: a spawn needs a task
void new J1MSKYClient().spawn({ model: 'k2p5' });
// @ts-expect-error: retryAfter is a number of seconds
const wrong: string = new RateLimitError('x').retryAfter;
void wrong;
void main;
