// JavaScript - SDK has built-in retry
const client = new J1MSKYClient({
  maxRetries: 5,
  retryDelay: 1000
});
