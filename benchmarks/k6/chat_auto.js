// Streaming /api/chat with "model": "auto": the proxy decides, the stream must end
// with done and name a real model in every chunk.
import http from "k6/http";
import { check } from "k6";
import { AUTO, BASE, VIA_PROXY, headers, lines, load, thresholds } from "./common.js";

export const options = { ...load(), thresholds };

const PROMPTS = [
  "Fix the off-by-one error in this loop: for (i = 0; i <= n; i++) a[i] = 0;",
  "Explain what a reverse proxy does in two sentences.",
  "Write a Python function that merges two sorted lists.",
  "Summarize: the quick brown fox jumps over the lazy dog.",
];

export default function () {
  const body = {
    model: AUTO,
    messages: [{ role: "user", content: PROMPTS[__ITER % PROMPTS.length] }],
  };
  const res = http.post(`${BASE}/api/chat`, JSON.stringify(body), headers());
  check(res, {
    "status 200": (r) => r.status === 200,
    "chosen model in the header": (r) => !VIA_PROXY || !!r.headers["X-Autoroute-Model"],
    "stream ended with done": (r) => {
      const all = lines(r.body);
      return all.length > 1 && all[all.length - 1].done === true &&
        all.every((c) => c.model && c.model !== "auto");
    },
  });
}
