// Calls made with the official JavaScript clients, `ollama` (ollama-js) and `openai`
// (openai-node), as a Node program would make them; run by tests/test_js_clients.py.
//
//   node js_clients.mjs <directory the clients are installed in> <calls.json>
//
// calls.json: {"host": "http://...", "calls": [{"client", "method", "args", ...}]}.
// `method` is the client's attribute path ("chat", "chat.completions.create"); an
// arg {"$bytes": base64} becomes a Uint8Array, {"$file": base64, "name"} a file made
// with openai's toFile. `abort_after: n` aborts a stream once n chunks are read, the
// way each client offers (`abort` names it: "iterator", "client", "controller",
// "signal"). Prints one JSON array: for each call, the result or the chunks read
// (and what the client raised), the status and headers of each answer, the
// X-Request-Id and X-Autoroute-Model each answer carried.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const [installed, callsFile] = process.argv.slice(2);
const require = createRequire(path.join(installed, "package.json"));
const { Ollama } = require("ollama");
const { OpenAI, toFile } = require("openai");
const { host, calls } = JSON.parse(fs.readFileSync(callsFile, "utf8"));

async function decoded(value) {
  if (Array.isArray(value)) return Promise.all(value.map(decoded));
  if (value && typeof value === "object") {
    if ("$bytes" in value) return new Uint8Array(Buffer.from(value.$bytes, "base64"));
    if ("$file" in value) return toFile(Buffer.from(value.$file, "base64"), value.name);
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = await decoded(v);
    return out;
  }
  return value;
}

function raised(error) {
  if (error?.name === "ResponseError") {
    return { raised: "ResponseError", status: error.status_code, error: error.error };
  }
  if (error instanceof OpenAI.APIError) {
    const body = error.error ?? null;
    return { raised: error.constructor.name, status: error.status ?? null, message: error.message, body };
  }
  // An error the client throws for a stream's error line, or for an abort.
  return { raised: error?.name ?? typeof error, message: String(error?.message ?? error) };
}

async function run(call) {
  const answers = [];
  const fetchSeen = async (url, init) => {
    const response = await fetch(url, init);
    if (!String(url).startsWith("data:")) {
      // (openai-node probes FormData support with a data: URL)
      const headers = {};
      response.headers.forEach((v, k) => { headers[k] = v; });
      answers.push({ status: response.status, headers });
    }
    return response;
  };
  const client = call.client === "ollama"
    ? new Ollama({ host, fetch: fetchSeen })
    : new OpenAI({ baseURL: host + "/v1", apiKey: "ollama", fetch: fetchSeen, maxRetries: 0 });
  const names = call.method.split(".");
  const owner = names.slice(0, -1).reduce((o, n) => o[n], client);
  const args = await decoded(call.args);
  const controller = new AbortController();
  const options = call.abort === "signal" ? [{ signal: controller.signal }] : [];
  const chunks = [];
  try {
    const result = await owner[names.at(-1)](args, ...options);
    if (result && typeof result.getPaginatedItems === "function") {
      return { result: { data: result.data }, answers };  // a page: its items
    }
    if (!result || typeof result[Symbol.asyncIterator] !== "function") {
      return { result, answers };
    }
    const abort = {
      iterator: () => result.abort(),
      client: () => client.abort(),
      controller: () => result.controller.abort(),
      signal: () => controller.abort(),
    }[call.abort];
    for await (const chunk of result) {
      chunks.push(chunk);
      if (call.abort_after !== undefined && chunks.length >= call.abort_after) abort();
    }
    return { chunks, answers };
  } catch (error) {
    return { chunks, ...raised(error), answers };
  }
}

const out = [];
for (const call of calls) out.push(await run(call));
process.stdout.write(JSON.stringify(out));
