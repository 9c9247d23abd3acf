// Streaming /api/generate with a named model: pure pass-through.
import http from "k6/http";
import { check } from "k6";
import { BASE, MODEL, headers, lines, load, thresholds } from "./common.js";

export const options = { ...load(), thresholds };

export default function () {
  const body = { model: MODEL, prompt: "Write a haiku about proxies." };
  const res = http.post(`${BASE}/api/generate`, JSON.stringify(body), headers());
  check(res, {
    "status 200": (r) => r.status === 200,
    "stream ended with done": (r) => {
      const all = lines(r.body);
      return all[all.length - 1].done === true && all[0].model === MODEL;
    },
  });
}
