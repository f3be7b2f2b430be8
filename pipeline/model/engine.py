"""Continuous batching of the language half: requests join and leave the running batch at every
decoding step (iteration-level scheduling, as in Orca and vLLM).

Each :meth:`Engine.step` (1) ends the waiting requests whose caller went away, (2) decodes one
token for every running row, (3) admits waiting requests in arrival order, prefilled together,
within ``max_num_seqs`` running rows and ``max_num_batched_tokens`` tokens per step, and merges
their KV cache into the running one, (4) retires rows that ended (an end token, their token
limit, their caller's stop string, or their caller went away) and frees their cache.

Why not transformers' own continuous batching: in the installed transformers 5.24,
``ContinuousBatchingManager.add_request(input_ids: list[int], ...)``
(``generation/continuous_batching/continuous_api.py``) takes token ids only; a request's state
keeps ``initial_tokens`` and the model runner builds one packed ``input_ids`` tensor per step
(``input_outputs.py``: ``self.input_ids[: len(input_ids)] = to_tensor(input_ids)``) that goes
through the embedding table. There is no place for ``inputs_embeds``, so HiRED's projected,
dropped image embeddings cannot enter it; this module is the smallest scheduler that can.

The running batch is one left-padded ``DynamicCache`` with an ``attention_mask`` ``(B, T)``;
position ids come from the mask's cumulative sum, as ``generate`` computes them, so greedy
tokens equal ``generate``'s for the same requests. Admission plans a prefill's cost before
running it: with HiRED every image's visual length is known from its encoded tokens
(:meth:`HiredVLM.input_length`), so the token budget is exact. KV-cache memory is bounded by
``max_num_seqs`` rows of at most the request's own ``input + max_new_tokens`` positions (the
endpoint checks each against ``max_model_len`` before any model work); the padded cache is at
most ``max_num_seqs x`` the longest running row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .encoded import EncodedImage
from .generation import GenerateOptions, Generation, TokenLogprob

if TYPE_CHECKING:
    from .vlm import HiredVLM

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The caller went away before its request was admitted."""


@dataclass(frozen=True)
class EngineLimits:
    """Bounds on the running batch, named as vLLM names them. Validated at construction.

    Attributes:
        max_num_seqs: most requests decoding at once (rows of the running batch).
        max_num_batched_tokens: most tokens one step feeds the model: a token per running row
            plus the left-padded prompts admitted in that step (rows x the longest). A request
            longer than this is admitted alone, when nothing else is prefilling, rather than never.
        max_padding: largest padding share of one step's prefill (``1 - sum(len) / (n x
            max(len))``); a request that would push it higher waits for the next step.
    """

    max_num_seqs: int = 8
    max_num_batched_tokens: int = 8192
    max_padding: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.max_padding <= 1.0:
            raise ValueError(f"max_padding must be in [0, 1], got {self.max_padding}")


@dataclass(eq=False)  # identity: requests are told apart by object, never by content
class EngineRequest:
    """One request to the engine and the callbacks it answers through (all on the stepping thread).

    Attributes:
        ids: prompt ids holding one image token per image (:meth:`HiredVLM.chat_ids`).
        images: the request's encoded images.
        options: decoding settings (``stop`` is the caller's business: see ``on_token``).
        top_logprobs: alternatives per token when log-probabilities are wanted, else None.
        on_token: sees each new token (end tokens excluded); returning True ends the row there.
        cancelled: True once the caller went away: a waiting request never starts, a running
            one ends at the next step.
        on_done: called exactly once, with the :class:`Generation` or the exception that ended it.
    """

    ids: list[int]
    images: list[EncodedImage]
    options: GenerateOptions
    on_done: Callable[[Generation | BaseException], None]
    top_logprobs: int | None = None
    on_token: Callable[[int], bool] | None = None
    cancelled: Callable[[], bool] | None = None
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Row:
    """A running request: its tokens so far and its sampling state."""

    request: EngineRequest
    prompt_tokens: int
    padding: float
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first: float | None = None
    done: bool = False


class Engine:
    """Continuous batching over one :class:`HiredVLM`'s language half. Not thread-safe except
    :meth:`submit`: one thread calls :meth:`step`, any thread may submit."""

    def __init__(self, vlm: HiredVLM, limits: EngineLimits | None = None) -> None:
        self.vlm = vlm
        self.model = vlm.model
        self.limits = limits or EngineLimits()
        self.end_ids = vlm.end_token_ids()
        self._waiting: deque[EngineRequest] = deque()
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (B, T) over the cache's positions

    def submit(self, request: EngineRequest) -> None:
        """Queue a request; it is admitted at a later :meth:`step`."""
        with self._lock:
            self._waiting.append(request)

    @property
    def has_work(self) -> bool:
        """Whether requests wait or run."""
        with self._lock:
            return bool(self._waiting or self._rows)

    @property
    def running(self) -> int:
        """Rows in the running batch."""
        return len(self._rows)

    def run(self) -> None:
        """Step until every submitted request has been answered."""
        while self.has_work:
            self.step()

    @torch.inference_mode()
    def step(self) -> int:
        """One iteration: decode the running rows, admit waiting requests, retire finished rows.

        Returns the number of rows that decoded a token in this step (running plus admitted).
        """
        self._drop_cancelled_waiting()
        decoded = len(self._rows)
        if self._rows:
            self._decode()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        self._retire()
        return decoded + len(admitted)

    # -- scheduling ----------------------------------------------------------------------------

    def _drop_cancelled_waiting(self) -> None:
        with self._lock:
            gone = [r for r in self._waiting if r.cancelled is not None and r.cancelled()]
            for request in gone:
                self._waiting.remove(request)
        for request in gone:
            request.on_done(Cancelled())

    def _admit(self) -> list[EngineRequest]:
        """Waiting requests, first come first served, that fit this step's row, token and padding
        budgets. HiRED's fixed visual length makes each prompt's length, and so the padded
        prefill's cost, known before any model work."""
        admitted: list[EngineRequest] = []
        lengths: list[int] = []
        budget = self.limits.max_num_batched_tokens - len(self._rows)  # the decode step's tokens
        with self._lock:
            while self._waiting and len(self._rows) + len(admitted) < self.limits.max_num_seqs:
                request = self._waiting[0]
                try:
                    length = self.vlm.input_length(request.ids, request.images)
                except Exception:  # noqa: BLE001 - a malformed request fails in its own prefill
                    length = len(request.ids)
                if admitted or self._rows:  # else it runs, alone if need be, rather than never
                    longest = max([*lengths, length])
                    padding = 1 - (sum(lengths) + length) / ((len(lengths) + 1) * longest)
                    if (len(lengths) + 1) * longest > budget or (admitted and padding > self.limits.max_padding):
                        break
                admitted.append(self._waiting.popleft())
                lengths.append(length)
        return admitted

    def _retire(self) -> None:
        """Answer and remove rows that ended; trim cache columns no remaining row uses."""
        keep = [n for n, row in enumerate(self._rows) if not row.done]
        for row in self._rows:
            if row.done:
                row.request.on_done(self._generation(row))
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[n] for n in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(0).long().argmax())  # leading columns that are padding in every row
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def fail_all(self, error: BaseException) -> None:
        """End every waiting and running request with ``error`` (after a failure the engine
        cannot attribute to requests) and start from an empty batch."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            request.on_done(error)
        self._fail_running(error)

    def _fail_running(self, error: BaseException) -> None:
        logger.exception("decoding step failed; ending its %d row(s)", len(self._rows))
        for row in self._rows:
            row.request.on_done(error)
        self._rows, self._cache, self._mask = [], None, None

    # -- model work ----------------------------------------------------------------------------

    def _decode(self) -> None:
        """One token for every running row, from the running cache."""
        try:
            last = torch.tensor([[row.tokens[-1]] for row in self._rows], device=self.vlm.device)
            self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
            positions = self._mask.sum(-1, keepdim=True) - 1
            output = self.model(
                input_ids=last, attention_mask=self._mask, position_ids=positions,
                cache=self._cache, use_cache=True, logits_to_keep=1,
            )
            self._take(self._rows, output.logits[:, -1])
        except Exception as error:  # noqa: BLE001 - every running row shares the failed step
            self._fail_running(error)

    def _prefill(self, requests: list[EngineRequest]) -> None:
        """Prefill ``requests`` together and merge them into the running batch; if that fails,
        each alone, so that only a request that cannot run fails."""
        try:
            rows, cache, mask, logits = self._forward_prompts(requests)
        except Exception as error:  # noqa: BLE001 - isolated below
            if len(requests) > 1:
                logger.warning("prefill of %d failed (%s: %s); retrying one by one", len(requests), type(error).__name__, error)
                for request in requests:
                    self._prefill([request])
                return
            logger.exception("request failed in prefill")
            requests[0].on_done(error)
            return
        self._merge(cache, mask)
        self._rows.extend(rows)
        self._take(rows, logits)

    def _forward_prompts(self, requests: list[EngineRequest]) -> tuple[list[_Row], DynamicCache, torch.Tensor, torch.Tensor]:
        """Left-padded prefill of ``requests``: their rows, cache, mask ``(n, T)`` and last logits ``(n, V)``."""
        embeds, mask = self.vlm.embed_chats([(r.ids, r.images) for r in requests])
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate() computes them
        output = self.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            # sliding-window and other layer kinds keep state the merge below does not handle
            raise NotImplementedError("continuous batching needs full-attention cache layers (DynamicLayer)")
        padding = 1.0 - float(mask.sum()) / mask.numel()
        rows = [
            _Row(r, int(mask[n].sum()), padding, _generator(r.options, self.vlm.device))
            for n, r in enumerate(requests)
        ]
        return rows, cache, mask, output.logits[:, -1]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Join a prefilled cache to the running one: left-pad the shorter along the sequence
        dimension, concatenate along the batch."""
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits ``(n, V)`` and tell its caller."""
        now = time.perf_counter()
        for row, scores in zip(rows, logits):
            options = row.request.options
            token = _choose(scores, options, row.generator)
            if row.first is None:
                row.first = now
            if token in self.end_ids:
                row.done = True
                continue
            row.tokens.append(token)
            if row.request.top_logprobs is not None:
                row.logprobs.append(_logprob(scores, token, row.request.top_logprobs))
            ended = row.request.on_token(token) if row.request.on_token is not None else False
            cancelled = row.request.cancelled is not None and row.request.cancelled()
            row.done = bool(ended) or cancelled or len(row.tokens) >= options.max_new_tokens

    def _generation(self, row: _Row) -> Generation:
        request = row.request
        end = time.perf_counter()
        generation = self.vlm.finish(
            row.tokens, row.prompt_tokens, request.options, (row.first or end) - request.submitted, end - request.submitted
        )
        generation.logprobs = row.logprobs if request.top_logprobs is not None else None
        generation.padding_fraction = row.padding
        return generation


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros prepended along ``dim`` up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _generator(options: GenerateOptions, device: torch.device) -> torch.Generator | None:
    """A per-request generator when the request samples with a seed, so that its answer does
    not depend on which requests share its steps."""
    if not options.sampling or options.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(options.seed)


def _choose(scores: torch.Tensor, options: GenerateOptions, generator: torch.Generator | None) -> int:
    """The next token from one row's raw logits ``(V,)``: argmax, or temperature then top-p
    sampling (transformers' order)."""
    if not options.sampling:
        return int(scores.argmax())
    logits = scores.float() / options.temperature
    if options.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        mass = ordered.softmax(-1).cumsum(-1)
        drop = mass - ordered.softmax(-1) > options.top_p  # keeps the token that crosses top_p
        logits = logits.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def _logprob(scores: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s log-probability under the raw logits ``(V,)`` and the ``top`` best alternatives."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    best = torch.topk(logp, top) if top else None
    alternatives = tuple(zip(best.indices.tolist(), best.values.tolist())) if best is not None else ()
    return TokenLogprob(token, float(logp[token]), alternatives)
