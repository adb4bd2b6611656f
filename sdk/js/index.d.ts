// Type declarations of the j1msky package (hand-written; the code is src/j1msky.js).

export declare const VERSION: string;

export type Priority = 'low' | 'normal' | 'high';
export type AgentState = 'spawning' | 'queued' | 'running' | 'completed' | 'failed' | 'cancelled' | string;

export interface ClientOptions {
  /** The daemon, with or without `/api` (default: $J1MSKY_API, else http://localhost:8080). */
  baseUrl?: string;
  /** Bearer token (default: $J1MSKY_KEY; none: a loopback caller gets the daemon's `local_scopes`). */
  apiKey?: string | null;
  /** The key's signing secret (default: $J1MSKY_SECRET): every request is HMAC-signed (X-Timestamp, X-Signature). */
  apiSecret?: string | null;
  /** Per request, in ms (default 30000). */
  timeout?: number;
  /** Retries of 429, 5xx and network errors (default 3). */
  maxRetries?: number;
  /** Backoff base in ms (default 500); a server's Retry-After is a floor. */
  retryDelay?: number;
  /** Backoff cap in ms (default 30000). */
  maxRetryDelay?: number;
  /** Longest pause between polls of waitForCompletion, in ms (default 1000). */
  pollInterval?: number;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /** A fetch implementation (default: the global fetch). */
  fetch?: typeof fetch;
  /** A WebCrypto implementation (default: globalThis.crypto, node:crypto's webcrypto on Node 18). */
  crypto?: Crypto;
}

export interface RequestOptions {
  body?: unknown;
  params?: Record<string, string | number | boolean | null | undefined>;
  /** Default: a fresh UUID for every POST and PUT, kept by its retries. */
  idempotencyKey?: string;
  /** false: a single attempt. */
  retry?: boolean;
}

export interface SpawnRequest {
  model: string;
  task: string;
  priority?: Priority;
  /** Seconds the agent may run. */
  timeout?: number;
  /** Where this agent's end is POSTed (sent as the API's `webhook_url`). */
  webhookUrl?: string;
  privacy?: { retention_days?: number; retentionDays?: number; [k: string]: unknown };
  [field: string]: unknown;
}

export interface TeamRequest extends Omit<SpawnRequest, 'model'> {
  team: string;
}

/** An agent as GET /agent/{id} shows it: the API's snake_case fields, their camelCase twins, and a few names of the reference. */
export interface AgentResult {
  id: string;
  agent_id: string;
  agentId: string;
  status: AgentState;
  state: AgentState;
  /** The agent's result text (the API's `result`). */
  output: string | null;
  result?: string | null;
  cost: number | null;
  error: string | null;
  model?: string;
  task?: string;
  [field: string]: unknown;
}

export interface WaitOptions {
  /** ms (default 300000). */
  timeout?: number;
  /** Longest pause between polls, ms. */
  pollInterval?: number;
}

export declare class Agent {
  readonly client: J1MSKYClient;
  /** The spawn's answer. */
  readonly data: Record<string, unknown>;
  readonly id: string;
  readonly agentId: string;
  /** The status at spawn time. */
  readonly status: AgentState;
  readonly estimatedCost: number | null;
  getStatus(): Promise<AgentResult>;
  waitForCompletion(options?: WaitOptions): Promise<AgentResult>;
  cancel(): Promise<Record<string, unknown>>;
}

export interface QuoteRequest {
  model: string;
  estimatedInputTokens?: number;
  estimatedInput?: number;
  estimatedOutputTokens?: number;
  estimatedOutput?: number;
  complexity?: 'low' | 'medium' | 'high';
  segment?: 'enterprise' | 'mid_market' | 'smb' | 'startup';
  deliveryType?: 'task' | 'subscription' | 'enterprise';
}

export interface GuardrailCheck {
  is_compliant: boolean;
  isCompliant: boolean;
  action: string;
  [field: string]: unknown;
}

export interface Quote {
  internal_cost: number;
  internalCost: number;
  recommended_price: number;
  recommendedPrice: number;
  gross_margin_pct: number;
  grossMarginPct: number;
  guardrail_check: GuardrailCheck;
  guardrailCheck: GuardrailCheck;
  /** The whole answer of POST /pricing/quote. */
  raw: Record<string, unknown>;
  [field: string]: unknown;
}

export interface WebhookRequest {
  url: string;
  events?: string[];
  secret?: string;
  description?: string;
  [field: string]: unknown;
}

export declare class J1MSKYClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  apiKey: string | null;
  apiSecret: string | null;
  timeout: number;
  maxRetries: number;
  retryDelay: number;
  maxRetryDelay: number;
  pollInterval: number;
  request<T = any>(method: string, path: string, options?: RequestOptions): Promise<T>;
  spawn(request: SpawnRequest): Promise<Agent>;
  spawnTeam(request: TeamRequest): Promise<Agent>;
  spawnBatch(requests: SpawnRequest[]): Promise<Agent[]>;
  getAgentStatus(agentId: string): Promise<AgentResult>;
  waitForCompletion(agentId: string, options?: WaitOptions): Promise<AgentResult>;
  listAgents(params?: Record<string, string | number | undefined>): Promise<any>;
  cancel(agentId: string): Promise<Record<string, unknown>>;
  getQuote(request: QuoteRequest): Promise<Quote>;
  registerWebhook(request: WebhookRequest): Promise<Record<string, unknown>>;
  listWebhooks(): Promise<Record<string, unknown>>;
  deleteWebhook(webhookId: string): Promise<Record<string, unknown>>;
  health(): Promise<Record<string, unknown>>;
}

/** The API reference's older name of J1MSKYClient. */
export declare const Agency: typeof J1MSKYClient;
export type Agency = J1MSKYClient;

export interface ErrorOptions {
  status?: number | null;
  requestId?: string | null;
  type?: string | null;
  details?: unknown;
  body?: unknown;
  cause?: unknown;
}

/** An API error (the daemon's error envelope), or NETWORK_ERROR, TIMEOUT, INVALID_RESPONSE, WAIT_TIMEOUT. */
export declare class J1MSKYError extends Error {
  constructor(message: string, options?: ErrorOptions);
  /** HTTP status; null when no answer came. */
  status: number | null;
  requestId: string | null;
  type: string | null;
  details: unknown;
  body: unknown;
}

export declare class RateLimitError extends J1MSKYError {
  constructor(message: string, options?: ErrorOptions & { retryAfter?: number | null });
  /** Seconds to wait (Retry-After). */
  retryAfter: number | null;
}

export declare function signRequest(secret: string, timestamp: string, method: string, path: string, body: string,
                                    crypto?: Crypto): Promise<string>;
export declare function backoffDelay(attempt: number, baseMs: number, capMs: number, retryAfterSeconds?: number | null,
                                     random?: () => number): number;
export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | null;

declare const sdk: {
  VERSION: typeof VERSION;
  J1MSKYClient: typeof J1MSKYClient;
  Agency: typeof J1MSKYClient;
  Agent: typeof Agent;
  J1MSKYError: typeof J1MSKYError;
  RateLimitError: typeof RateLimitError;
  signRequest: typeof signRequest;
  backoffDelay: typeof backoffDelay;
  parseRetryAfter: typeof parseRetryAfter;
};
export default sdk;
