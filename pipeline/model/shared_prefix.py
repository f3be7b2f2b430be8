"""Many questions about one image with the image's prefix computed once.

Every question about an image starts with the same tokens: the chat template's system turn, the
user header and the image's visual tokens, which are most of the prompt. :func:`answer_questions`
runs that common prefix through the LLM once, repeats its KV cache across the batch of
questions, and lets ``generate`` prefill only each question's own tokens: left-padded after the
prefix, with the padding masked (``generate`` numbers positions from the attention mask, so each
question's positions continue from the prefix as in a prompt of its own). Greedy answers equal
:meth:`HiredVLM.generate`'s on the same prompts (``tests/test_testbed.py``), at a fraction of the
prefill: evaluation asks 15 questions per image.
"""

from __future__ import annotations

import time

import torch

from .encoded import EncodedImage
from .generation import GenerateOptions, Generation


def common_prefix(sequences: list[list[int]]) -> int:
    """Length of the longest prefix that every sequence shares."""
    shortest = min(len(s) for s in sequences)
    for index in range(shortest):
        if any(s[index] != sequences[0][index] for s in sequences):
            return index
    return shortest


@torch.inference_mode()
def answer_questions(vlm, encoded: EncodedImage, prompts: list[str], options: GenerateOptions) -> list[Generation]:
    """Greedy answers to ``prompts``, each asked alone about the image ``encoded``.

    ``vlm`` is a :class:`~pipeline.model.vlm.HiredVLM`. Each prompt keeps at least its last token
    outside the shared prefix, so every row has a token of its own to prefill.
    """
    from transformers import DynamicCache

    if options.sampling:
        raise ValueError("answer_questions decodes greedily: pass temperature=0")
    start = time.perf_counter()
    ids = [vlm.prompt_ids(p) for p in prompts]
    shared = min(common_prefix(ids), min(len(i) for i in ids) - 1)
    if ids[0][:shared].count(vlm.image_token_id) != 1:
        raise ValueError("the prompts do not share the image slot: ask them with HiredVLM.generate")
    prefix = vlm._embed_chat(ids[0][:shared], [encoded])[None]
    cache = DynamicCache(config=vlm.model.config.get_text_config())
    # past_key_values: the name every transformers 5.x takes (the newest warn and call it cache)
    vlm.model(inputs_embeds=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(len(prompts))
    own = [i[shared:] for i in ids]
    width = max(len(o) for o in own)
    pad = vlm.tokenizer.pad_token_id
    input_ids = torch.full((len(own), prefix.shape[1] + width), pad, dtype=torch.long, device=vlm.device)
    mask = torch.zeros_like(input_ids)
    mask[:, : prefix.shape[1]] = 1
    for row, tokens in enumerate(own):
        input_ids[row, input_ids.shape[1] - len(tokens) :] = torch.tensor(tokens, device=vlm.device)
        mask[row, input_ids.shape[1] - len(tokens) :] = 1
    output = vlm.model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        past_key_values=cache,
        max_new_tokens=options.max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad,
    )
    elapsed = time.perf_counter() - start
    new = output[:, input_ids.shape[1] :]
    return [
        vlm.finish(tokens.tolist(), int(mask[row].sum()), options, elapsed, elapsed)
        for row, tokens in enumerate(new)
    ]
