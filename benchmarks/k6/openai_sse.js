// /v1/chat/completions with stream: true (server-sent events), ending with [DONE].
import http from "k6/http";
import { check } from "k6";
import { BASE, MODEL, headers, load, thresholds } from "./common.js";

export const options = { ...load(), thresholds };

export default function () {
  const body = {
    model: __ENV.SSE_MODEL || MODEL,
    stream: true,
    messages: [{ role: "user", content: "Name three HTTP status codes." }],
  };
  const res = http.post(`${BASE}/v1/chat/completions`, JSON.stringify(body), headers());
  check(res, {
    "status 200": (r) => r.status === 200,
    "event stream": (r) => (r.headers["Content-Type"] || "").startsWith("text/event-stream"),
    "ended with [DONE]": (r) => r.body.trimEnd().endsWith("data: [DONE]"),
  });
}
