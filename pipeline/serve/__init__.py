"""The OpenAI-compatible endpoint on Ray Serve: ``ServeConfig`` (``config``), OpenAI errors
(``errors``), the chat-completions protocol (``protocol``), images in requests and the remote-URL
allowlist (``images``), the two batched model deployments (``deployments``), the HTTP ingress
(``ingress``) and building / starting the app (``app``). Imports ``model``, ``data`` and Ray Serve.
"""
