// Streaming /api/generate through BASE (the proxy or the emulator directly).
// k6 reads the whole NDJSON body; http_req_waiting is the time to first byte.
import http from "k6/http";
import { check } from "k6";

const BASE = __ENV.BASE || "http://127.0.0.1:11435";
const MODEL = __ENV.MODEL || "qwen2.5:7b";

export const options = {
  thresholds: { http_req_failed: ["rate==0"] },
};

export default function () {
  const res = http.post(
    `${BASE}/api/generate`,
    JSON.stringify({ model: MODEL, prompt: "Write a haiku about proxies." }),
    { headers: { "Content-Type": "application/json" } },
  );
  check(res, {
    "status 200": (r) => r.status === 200,
    "stream ended with done": (r) => r.body.includes('"done":true'),
  });
}
