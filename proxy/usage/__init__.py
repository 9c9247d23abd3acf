"""Usage events: one per inference request, to PostgreSQL, Kafka or a local file, off
the request path and without losing any (see `pipeline`, `runner`, `spool`)."""

from proxy.usage.pipeline import UsagePipeline
from proxy.usage.routes import UsageRoutes

__all__ = ["UsagePipeline", "UsageRoutes"]
