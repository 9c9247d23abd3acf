// Shared by the scripts: where to send, which key, and the load shape.
// BASE: the proxy (default) or a backend directly; KEY: an API key when auth is on.
// SOAK=1: 64 virtual users for 10 minutes (SOAK_DURATION to change it); otherwise
// VUS (default 16) for DURATION (default 20s).
export const BASE = __ENV.BASE || "http://127.0.0.1:11435";
export const MODEL = __ENV.MODEL || "llama3.1:8b";
// Direct runs against a backend have no `auto`: they name this model instead.
export const AUTO = __ENV.AUTO_MODEL || "auto";
export const VIA_PROXY = AUTO === "auto";

export function headers() {
  const h = { "Content-Type": "application/json" };
  if (__ENV.KEY) h.Authorization = `Bearer ${__ENV.KEY}`;
  return { headers: h, timeout: "120s" };
}

export function load() {
  if (__ENV.SOAK) {
    return { vus: 64, duration: __ENV.SOAK_DURATION || "10m" };
  }
  return { vus: Number(__ENV.VUS || 16), duration: __ENV.DURATION || "20s" };
}

// No failed request and every check held. Through the proxy, k6_demo also passes a
// time-to-first-byte budget derived from a direct run of the same script in the same
// session (TTFB_P50_MS, TTFB_P95_MS), so that a slower proxy breaches a threshold.
const budget = [];
if (__ENV.TTFB_P50_MS) budget.push(`med<${__ENV.TTFB_P50_MS}`);
if (__ENV.TTFB_P95_MS) budget.push(`p(95)<${__ENV.TTFB_P95_MS}`);
export const thresholds = {
  http_req_failed: ["rate==0"],
  checks: ["rate==1"],
  ...(budget.length ? { http_req_waiting: budget } : {}),
};

export function lines(body) {
  return body.split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));
}
