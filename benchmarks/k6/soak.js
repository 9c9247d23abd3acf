// The soak: every workload at once, 64 virtual users for 10 minutes (SOAK_DURATION to
// change it). k6_demo runs slow readers beside it and watches the proxy's memory.
import chatAutoRun from "./chat_auto.js";
import passthroughRun from "./passthrough.js";
import sseRun from "./openai_sse.js";
import { chat as editorChatRun, fim as fimRun } from "./editor_mix.js";
import { thresholds } from "./common.js";

const duration = __ENV.SOAK_DURATION || "10m";
const scenario = (exec, vus) => ({ executor: "constant-vus", exec, vus, duration });

export const options = {
  scenarios: {
    chat_auto: scenario("chatAuto", 16),
    passthrough: scenario("passthrough", 16),
    editor_fim: scenario("fim", 20),
    editor_chat: scenario("editorChat", 4),
    openai_sse: scenario("sse", 8),
  },
  thresholds,
};

export function chatAuto() { chatAutoRun(); }
export function passthrough() { passthroughRun(); }
export function fim() { fimRun(); }
export function editorChat() { editorChatRun(); }
export function sse() { sseRun(); }
