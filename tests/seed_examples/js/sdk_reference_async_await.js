import { J1MSKYClient } from 'j1msky';

async function runWorkflow() {
  const client = new J1MSKYClient();
  
  // Research phase
  const researcher = await client.spawn({
    model: 'sonnet',
    task: 'Research: Latest trends in AI automation'
  });
  const research = await researcher.waitForCompletion();
  
  // Writing phase
  const writer = await client.spawn({
    model: 'k2p5',
    task: `Write blog post based on: ${research.output}`
  });
  const article = await writer.waitForCompletion();
  
  return article;
}

runWorkflow().catch(console.error);
