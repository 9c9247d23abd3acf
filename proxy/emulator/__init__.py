"""An Ollama emulator: a stand-in for a GPU Ollama server that speaks its HTTP protocol.

Used by tests, benchmarks and the demo (no real Ollama is installed here). Modules:

* catalog.py - the model table (also the pull "registry")
* synthesized.py - any other model name, described as Ollama would describe it
* state.py - EmulatorSettings, EmulatorState (counters read by tests), STATE_KEY, state_of
* wire.py - Go/Gin wire details: JSON encoding, decode errors, timestamps, 404/405
* textgen.py - deterministic output plans (text, thinking, JSON, tool calls, embeddings);
  made-up prose is made as it is sent
* skills.py - the profiling hook: per-area skill at the profiling suite's prompts
* engine.py - pacing, model loading, disconnect detection, metrics
* inference.py - validation shared by generate/chat and their compat wrappers
* native.py - /api/generate, /api/chat, /api/embed, /api/embeddings
* admin.py - tags, show, ps, pull/push/create/copy/delete, blobs, version, account
* openai_routes.py - /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models
* responses_api.py - /v1/responses (OpenAI Responses API)
* anthropic_routes.py - /v1/messages (Anthropic Messages API)
* faults.py - fault injection on every route that runs a model, in its shape
* app.py - create_app(): route table, Gin's 404/405, faults, control routes
"""

from __future__ import annotations

from .app import create_app
from .state import STATE_KEY, EmulatorSettings, EmulatorState

__all__ = ["STATE_KEY", "EmulatorSettings", "EmulatorState", "create_app"]
