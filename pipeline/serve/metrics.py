"""Prometheus metrics of the endpoint through Ray Serve's own metrics API (exported by Ray's
metrics agent with the deployment, replica and application tags Serve adds)."""

from __future__ import annotations

from ray.serve import metrics

_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]


class ServeMetrics:
    """The counters and histograms every deployment of the app shares (created once per replica)."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "hired_chat_requests", "Chat completion requests answered, by HTTP status.", tag_keys=("status",)
        )
        self.tokens = metrics.Counter(
            "hired_tokens", "Tokens of answered requests, by kind (prompt, completion).", tag_keys=("kind",)
        )
        self.visual_tokens = metrics.Counter("hired_visual_tokens_kept", "Visual tokens kept after dropping.")
        self.batch_size = metrics.Histogram(
            "hired_batch_size", "Requests per model batch.", boundaries=_BATCH_SIZES, tag_keys=("side",)
        )
        self.cancelled = metrics.Counter("hired_cancelled_requests", "Requests whose client went away before the answer.")

    def answered(self, status: int) -> None:
        self.requests.inc(tags={"status": str(status)})

    def usage(self, prompt: int, completion: int, visual: int) -> None:
        # Ray's counters refuse increments of zero
        for kind, count in (("prompt", prompt), ("completion", completion)):
            if count > 0:
                self.tokens.inc(count, tags={"kind": kind})
        if visual > 0:
            self.visual_tokens.inc(visual)
