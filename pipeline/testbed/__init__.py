"""The testbed: a small LLaVA-NeXT trained here on synthetic scenes, so answers and accuracy can be
real on a machine with no downloads (the shipped checkpoint is still undertrained: see docs/testbed.md).

Owns the scene generator (:mod:`.scenes`), the questions and captions about a scene
(:mod:`.questions`), the model's architecture, tokenizer and processor (:mod:`.architecture`), its
training stages (:mod:`.train`), the held-out evaluation set (:mod:`.make_eval_set`) and its
evaluation (:mod:`.evaluate`). The trained checkpoint ships in ``weights/`` as the built-in ``hired/testbed-llava-next``.
Imports ``model``, ``experiments`` (the tasks that score it) and ``tracking``.
"""
