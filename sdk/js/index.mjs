// The ES module entry (import { J1MSKYClient } from 'j1msky'): the same objects as require('j1msky').
// In Node, importing the CommonJS file gives its module.exports as `default`; in a browser the file
// runs as a module without `module`, so it leaves its exports on globalThis.J1MSKY instead.
import * as loaded from './src/j1msky.js';

const sdk = loaded.default ?? globalThis.J1MSKY;

export const {
  VERSION, J1MSKYClient, Agency, Agent, J1MSKYError, RateLimitError, signRequest, backoffDelay, parseRetryAfter
} = sdk;
export default sdk;
