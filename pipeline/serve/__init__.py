"""The OpenAI-compatible endpoint on Ray Serve: ``ServeConfig`` (``config``), OpenAI errors
(``errors``), the typed chat-completions protocol (``protocol``) and the answer bodies
(``responses``), the context-length check (``context``), images in requests and the remote-URL
allowlist (``images``), one LLM batch with stop strings, cancellation and isolation
(``decoding``), Prometheus metrics (``metrics``), the two batched model deployments
(``deployments``), the HTTP ingress (``ingress``) and building / starting the app (``app``).
Imports ``model``, ``data`` and Ray Serve.
"""
