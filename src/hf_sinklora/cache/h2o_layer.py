"""One layer of an :class:`~hf_sinklora.cache.EvictingCache`: slots of keys/values, their scores, eviction.

Tokens live in *slots* along dim 2 of ``keys``/``values`` ``(B, Hkv, slots, D)``. Every
(row, KV head) keeps its own set, so slot ``c`` of two heads may hold different tokens;
``slot_positions (B, Hkv, slots)`` says which (``-1``: free). Evicting one token during
decoding only frees its slot and the next token is written there: nothing is copied, so a
decode step touches ``budget`` keys instead of the whole history. Multi-token steps
(prefill, prefill chunks) evict many tokens and then compact the slots, so the tensors
shrink back to the budget.

The layer does not compute attention. ``update`` stores the step's keys, ``sf_attention``
(which alone knows the padding mask and the probabilities) calls :meth:`H2OLayer.begin_step`
and :meth:`H2OLayer.end_step` around its attention over the slots.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from .policy import EvictionPolicy

NOT_SCORED_HINT = (
    "H2OCache needs the attention probabilities, which only attn_implementation='sf_attention' hands it. "
    "After `import hf_sinklora`, load the model with AutoModelForCausalLM.from_pretrained(..., "
    "attn_implementation='sf_attention') or call model.set_attn_implementation('sf_attention')."
)
_FREE = -1


class H2OLayer(CacheLayerMixin):
    """KV cache of one attention layer under an :class:`EvictionPolicy` (Heavy-Hitter by default).

    Attributes:
        keys, values: ``(B, Hkv, slots, D)``; ``slots`` is ``budget`` (+1 spare while decoding)
            between steps and ``budget + q`` while a step of ``q`` tokens runs.
        slot_positions: ``(B, Hkv, slots)`` absolute position of the token in each slot, ``-1`` if free.
        scores: ``(B, Hkv, slots)`` float32 accumulated attention of each kept token;
            ``-inf`` for free slots and padding (never attended, evicted first), ``+inf`` for
            the sinks (never evicted).
        seen: tokens that went through this layer (kept or not).
        budget: tokens kept per (row, KV head); None until a fractional budget is fixed.
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, policy: EvictionPolicy):
        super().__init__()
        self.policy = policy
        self.budget: int | None = None if policy.is_fractional else int(policy.budget)
        self.seen = 0
        self.free_slots = 0
        self.slot_positions: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.first_real: torch.Tensor | None = None  # (B,) position of each row's first real token, -1: none yet
        self.sinks_settled = False  # every row's sinks have arrived and are scored +inf
        self.free_slot: torch.Tensor | None = None  # (B, Hkv, 1) the slot the last single eviction freed
        self.awaiting_scores = False

    # --- CacheLayerMixin -------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, _ = key_states.shape
        self.device = key_states.device
        self.keys = key_states.new_empty((batch, heads, 0, key_states.shape[-1]))
        self.values = value_states.new_empty((batch, heads, 0, value_states.shape[-1]))
        self.slot_positions = torch.empty((batch, heads, 0), dtype=torch.long, device=self.device)
        self.scores = torch.empty((batch, heads, 0), dtype=torch.float32, device=self.device)
        self.first_real = torch.full((batch,), _FREE, dtype=torch.long, device=self.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores the step's ``(B, Hkv, q, D)`` keys/values; returns every slot ``(B, Hkv, slots, D)``."""
        if self.awaiting_scores:
            raise ValueError(NOT_SCORED_HINT)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        num_new = key_states.shape[-2]
        if self.budget is None:
            self.budget = self.policy.budget_for(num_new)
        elif self.policy.is_fractional and num_new > 1 and self.seen > 0:
            raise ValueError(
                f"budget={self.policy.budget} (a fraction) was fixed by the first forward ({self.seen} tokens), "
                "but more prompt tokens followed (prefill_chunk_size, or a continued prompt); pass an int budget"
            )
        if num_new == 1 and self.free_slots:
            self._write_into_free_slot(key_states, value_states)
        else:
            self._compact()
            positions = torch.arange(self.seen, self.seen + num_new, device=self.device)
            positions = positions.expand(*self.slot_positions.shape[:2], num_new)
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            self.slot_positions = torch.cat([self.slot_positions, positions], dim=-1)
            self.scores = torch.cat([self.scores, self.scores.new_zeros(positions.shape)], dim=-1)
        self.seen += num_new
        self.awaiting_scores = True
        self.keys.h2o_layer = self  # how sf_attention finds this layer: the very tensor it is handed
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Kept keys plus the new ones (the keys are not contiguous positions, so no offset)."""
        return self.num_kept + query_length, 0

    def get_seq_length(self) -> int:
        """Tokens seen, kept or not (what ``generate`` counts positions from)."""
        return self.seen

    def get_max_length(self) -> int:
        return -1  # any sequence length goes through; memory is bounded by the budget instead

    def reset(self) -> None:
        self.__init__(self.policy)

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "H2OCache cannot be cropped: scores of the removed tokens' queries stay in the kept tokens and "
            "evicted tokens are gone. Assisted/speculative decoding needs a DynamicCache."
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_rows(lambda t: t[indices])

    # --- H2O ---------------------------------------------------------------------------

    @property
    def num_kept(self) -> int:
        """Tokens held per (row, KV head)."""
        return 0 if self.slot_positions is None else self.slot_positions.shape[-1] - self.free_slots

    @property
    def positions(self) -> torch.Tensor:
        """``(B, Hkv, kept)`` absolute positions of the kept tokens, ascending."""
        if self.slot_positions is None:
            raise ValueError("the layer holds nothing yet")
        ordered = torch.where(self.slot_positions == _FREE, torch.iinfo(torch.long).max, self.slot_positions)
        return ordered.sort(dim=-1).values[..., : self.num_kept]

    def query_positions(self, num_queries: int) -> torch.Tensor:
        """``(q,)`` positions of the queries of the step in flight (the last ``q`` tokens seen)."""
        return torch.arange(self.seen - num_queries, self.seen, device=self.device)

    def attendable(self) -> torch.Tensor:
        """``(B, Hkv, slots)`` bool: the slot holds a real (non-padding) token."""
        return self.scores > float("-inf")

    def holds_only_real_tokens(self) -> bool:
        """No slot is free or padding (one host sync; called once per multi-token step)."""
        return not self.free_slots and bool(self.attendable().all())

    def begin_step(self, num_new: int, new_tokens_real: torch.Tensor | None) -> None:
        """Marks padding among the step's tokens (never attended, first to go) and the sinks.

        Args:
            num_new: ``q``, tokens in the step.
            new_tokens_real: ``(B, q)`` bool, False for padding; None when every token is real.
        """
        first_new = self.seen - num_new
        if new_tokens_real is not None:
            new_tokens_real = new_tokens_real.to(device=self.device, dtype=torch.bool)
            offset = self.slot_positions - first_new  # (B, Hkv, slots): index among the new tokens
            column = offset.clamp(0, num_new - 1).flatten(1)
            real = new_tokens_real.gather(1, column).view_as(offset)
            self.scores.masked_fill_((offset >= 0) & ~real, float("-inf"))
            first = first_new + new_tokens_real.int().argmax(dim=1)
            self.first_real = torch.where((self.first_real == _FREE) & new_tokens_real.any(dim=1), first, self.first_real)
        elif not self.sinks_settled:
            self.first_real.masked_fill_(self.first_real == _FREE, first_new)
        if not self.sinks_settled:
            self._mark_sinks()

    def _mark_sinks(self) -> None:
        """Gives each row's first ``s`` real tokens a score of ``+inf``: never evicted."""
        sinks = self.policy.num_sink_tokens
        first = self.first_real[:, None, None]
        is_sink = (first != _FREE) & (self.slot_positions >= first) & (self.slot_positions < first + sinks)
        self.scores.masked_fill_(is_sink & self.attendable(), float("inf"))
        # once every row's sinks have arrived, nothing here can change any more
        self.sinks_settled = bool((self.first_real != _FREE).all()) and self.seen >= int(self.first_real.max()) + sinks

    def end_step(self, key_mass: torch.Tensor, sliding_window: int | None = None) -> None:
        """Adds the step's attention to the scores and evicts down to the budget.

        Args:
            key_mass: ``(B, Hkv, slots)`` float32: attention probability each slot received,
                summed over the step's queries and averaged over the query heads of its KV head.
            sliding_window: the layer's window; tokens that fell out of it go before heavy hitters.
        """
        self.scores += key_mass
        self.awaiting_scores = False
        excess = self.num_kept - self.budget
        if excess > 0:
            self._evict(excess, sliding_window)

    def _evict(self, count: int, sliding_window: int | None) -> None:
        """Frees ``count`` slots per (row, KV head): padding and tokens out of the sliding window
        first, never the sinks (scored ``+inf``), then the policy's lowest priorities."""
        newest = self.seen - 1
        priority = self.policy.keep_priority(self.scores, self.slot_positions, newest, self.budget)
        priority = torch.where(self.scores.isinf(), self.scores, priority)  # sinks +inf, padding/free -inf
        if sliding_window is not None:
            expired = (self.slot_positions <= newest - sliding_window) & (priority < float("inf"))
            priority = priority.masked_fill(expired, float("-inf"))
        if self.free_slots:
            priority = priority.masked_fill(self.slot_positions == _FREE, float("inf"))
        if count == 1:
            victims = priority.argmin(dim=-1, keepdim=True)
            self.free_slot = victims  # the next decode step writes here
        else:
            victims = priority.topk(count, dim=-1, largest=False).indices
        self.slot_positions.scatter_(-1, victims, _FREE)
        self.scores.scatter_(-1, victims, float("-inf"))
        self.free_slots += count
        if count > 1:
            self._compact()

    def _write_into_free_slot(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        slot = self.free_slot
        if slot is None:
            slot = (self.slot_positions == _FREE).int().argmax(dim=-1, keepdim=True)  # (B, Hkv, 1)
        self.free_slot = None
        index = slot[..., None].expand(*slot.shape, key_states.shape[-1])
        self.keys.scatter_(2, index, key_states)
        self.values.scatter_(2, slot[..., None].expand(*slot.shape, value_states.shape[-1]), value_states)
        self.slot_positions.scatter_(-1, slot, self.seen)
        self.scores.scatter_(-1, slot, 0.0)
        self.free_slots -= 1

    def _compact(self) -> None:
        """Drops free slots, keeping the rest in position order (the tensors shrink)."""
        if not self.free_slots:
            return
        ordered = torch.where(self.slot_positions == _FREE, torch.iinfo(torch.long).max, self.slot_positions)
        slot = ordered.argsort(dim=-1)[..., : self.num_kept]
        self.keys = self.keys.gather(2, slot[..., None].expand(*slot.shape, self.keys.shape[-1]))
        self.values = self.values.gather(2, slot[..., None].expand(*slot.shape, self.values.shape[-1]))
        self.slot_positions = self.slot_positions.gather(-1, slot)
        self.scores = self.scores.gather(-1, slot)
        self.free_slots = 0
        self.free_slot = None

    def _select_rows(self, select) -> None:
        """Applies a batch-dimension selection (beam search, batch expansion) to every state tensor."""
        if not self.is_initialized:
            return
        self.keys, self.values = select(self.keys), select(self.values)
        self.slot_positions, self.scores = select(self.slot_positions), select(self.scores)
        self.first_real = select(self.first_real)
        self.free_slot = None
