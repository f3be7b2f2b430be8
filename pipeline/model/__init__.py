"""The model, in two halves that can run in different processes.

Owns: loading checkpoints and the built-in models (``loading``, ``builtin``), ``ModelConfig``,
the two-half wrapper ``HiredVLM`` (``vlm``) and what crosses between the halves
(``EncodedImage``, ``encoded``), decoding options (``generation``), incremental detokenising
(``text_stream``), and the one set-up every model process runs (``replica.load_half``).
Imports ``hired_ops``, torch and transformers only: no Ray, no MLflow, so a GPU machine runs it
directly.
"""
