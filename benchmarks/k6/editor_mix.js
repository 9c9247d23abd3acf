// An editor: many short fill-in-the-middle completions (prompt + suffix, few tokens,
// not streamed) from most users, fewer long chats from the others.
import http from "k6/http";
import { check } from "k6";
import { AUTO, BASE, headers, lines, load, thresholds } from "./common.js";

const shape = load();
const chatVus = Math.max(1, Math.floor(shape.vus / 8));
export const options = {
  scenarios: {
    fim: {
      executor: "constant-vus",
      exec: "fim",
      vus: shape.vus - chatVus > 0 ? shape.vus - chatVus : 1,
      duration: shape.duration,
    },
    chat: { executor: "constant-vus", exec: "chat", vus: chatVus, duration: shape.duration },
  },
  thresholds,
};

const FIM_MODEL = __ENV.FIM_MODEL || "qwen2.5-coder:7b";
const CHAT_MODEL = __ENV.CHAT_MODEL || AUTO;

export function fim() {
  const body = {
    model: FIM_MODEL,
    prompt: `def add(a, b):\n    return a + b\n\ndef mul_${__ITER}(a, b):\n    `,
    suffix: "\n\nprint(add(1, 2))\n",
    stream: false,
    raw: true,
    options: { num_predict: 16, temperature: 0 },
  };
  const res = http.post(`${BASE}/api/generate`, JSON.stringify(body), headers());
  check(res, {
    "fim 200": (r) => r.status === 200,
    "fim done": (r) => JSON.parse(r.body).done === true,
  });
}

export function chat() {
  const body = {
    model: CHAT_MODEL,
    messages: [
      { role: "system", content: "You are a careful senior engineer." },
      { role: "user", content: "Refactor this module and explain each change. ".repeat(40) },
    ],
    options: { num_predict: 200 },
  };
  const res = http.post(`${BASE}/api/chat`, JSON.stringify(body), headers());
  check(res, {
    "chat 200": (r) => r.status === 200,
    "chat done": (r) => {
      const all = lines(r.body);
      return all[all.length - 1].done === true;
    },
  });
}
