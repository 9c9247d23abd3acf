// Shared by the scripts: where to send, which key, and the load shape.
// BASE: the proxy (default) or a backend directly; KEY: an API key when auth is on.
// SOAK=1: 64 virtual users for 10 minutes (SOAK_DURATION to change it); otherwise
// VUS (default 16) for DURATION (default 20s).
export const BASE = __ENV.BASE || "http://127.0.0.1:11435";
export const MODEL = __ENV.MODEL || "llama3.1:8b";

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

export const thresholds = {
  // No failed request, and every check held.
  http_req_failed: ["rate==0"],
  checks: ["rate==1"],
};

export function lines(body) {
  return body.split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));
}
