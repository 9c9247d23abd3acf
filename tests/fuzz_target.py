"""The proxy `tests/test_fuzz.py` fuzzes: its admin key and body limit. The test starts
one in-process with them; `benchmarks.fuzz_memory` starts one as a process of its own
with the same, and points the test at it."""

from __future__ import annotations

from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth
from proxy.config_serving import Limits

KEY = "fuzz-admin-key"
AUTH = Auth(keys=(ApiKey(sha256=hash_key(KEY), name="fuzz", role="admin"),))
LIMITS = Limits(max_body_bytes=100_000)
