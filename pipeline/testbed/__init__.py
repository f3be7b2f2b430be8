"""The testbed: a small LLaVA-NeXT trained here on synthetic scenes, so answers and accuracy are real.

Owns the scene generator (:mod:`.scenes`), the questions and captions about a scene
(:mod:`.questions`), the model's architecture, tokenizer and processor (:mod:`.architecture`), its
training stages (:mod:`.train`), the held-out evaluation set (:mod:`.make_eval_set`) and its
evaluation (:mod:`.evaluate`). The trained checkpoint ships in ``weights/``.
"""
