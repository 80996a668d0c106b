"""Documents that can only be predicted by looking far back, and the training mixtures built from them.

Four deterministic (seeded) generators, each returning a :class:`LongRangeDocument` of
*exactly* the requested number of tokens:

* :func:`passkey_document`: the passkey prompt of ``evaluation.passkey_prompt`` (same task
  description, key line and question) with a *varied* filler (the standard "grass is green"
  sentences, the same sentences shuffled, or natural-text sentences), the key at a random
  depth, followed by the answer ``" <key>."``;
* :func:`repeat_document`: natural text in which later passages repeat earlier ones verbatim
  at varying distances;
* :func:`kv_document`: natural text with ``"<name>'s number is <digits>."`` lines hidden in it
  and queried at the end (``"What is <name>'s number? <name>'s number is <digits>."``);
* :func:`periodic_document`: one pattern of random tokens repeated through the row (the fast
  way to teach copying by content, the demo base's first pretraining phase).

Each document carries a per-token ``long_range_mask``: ``mask[t]`` is True when token ``t`` can
only be predicted from a token more than ``threshold`` positions back (the copied tokens of a
repeat, the value of a queried key), which is what long-range perplexity scores.

:func:`mixture_rows` draws a shuffled mixture of these and natural-text rows;
:func:`pretraining_rows` (at the base context ``L``, passkeys included) and
:func:`finetuning_rows` (at ``4L``, never passkey prompts) are its two uses.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.passkey_prompt import FILLER, KEY_LINE, QUESTION, TASK_DESCRIPTION

logger = logging.getLogger(__name__)

# Bumped whenever the generators' output changes: part of the base-model cache key of mixtures.
GENERATOR_VERSION = 5
KINDS = ("text", "passkey", "repeat", "words", "tokens", "kv", "periodic")
# The mixtures of the base and the fine-tuning that discriminate (docs/results.md): random-token
# repeats ("tokens") keep copying by content alive in the base and re-form it after interpolation;
# without them in the fine-tuning rows (word-salad repeats instead) passkey at 4L stayed at 0%.
PRETRAINING_MIXTURE: dict[str, float] = {"text": 0.4, "passkey": 0.2, "tokens": 0.2, "kv": 0.1, "repeat": 0.1}
FINETUNING_MIXTURE: dict[str, float] = {"text": 0.2, "tokens": 0.4, "repeat": 0.2, "kv": 0.2}
KV_DEFINITION = "{name}'s number is {value}."
KV_QUERY = "What is {name}'s number? {name}'s number is"

_STANDARD_SENTENCES = [s.strip() for s in re.findall(r"[^.]+\.", FILLER)]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class LongRangeDocument:
    """One generated document.

    Attributes:
        input_ids: exactly ``length`` token ids (starting with ``<s>`` when the tokenizer adds it).
        long_range_mask: ``length`` booleans; ``mask[t]`` is True when token ``t`` is predictable
            only from a token more than ``threshold`` positions before it.
        kind: ``"passkey"``, ``"repeat"``, ``"kv"`` or ``"periodic"``.
        answers: ``(name, value)`` pairs: ``("pass key", key)`` for a passkey, each queried pair
            for a kv list, ``("distance", str(d))`` per repeated passage.
        copies: for a repeat document, ``(a, b, size)`` per repeated passage: tokens
            ``b .. b+size-1`` repeat tokens ``a .. a+size-1`` (distance ``b - a``).
        target_mask: ``length`` booleans marking the retrieval targets at any distance (the
            passkey answer ``" <key>."``, every copied token but a copy's first, every queried
            answer ``" <value>."``): what a retrieval-only loss scores. Empty when not given.
    """

    input_ids: list[int]
    long_range_mask: list[bool]
    kind: str
    answers: tuple[tuple[str, str], ...] = field(default=())
    copies: tuple[tuple[int, int, int], ...] = field(default=())
    target_mask: tuple[bool, ...] = field(default=())


class TextSource:
    """Natural text, tokenized once: a token stream, filler sentences and a pool of names.

    Attributes:
        stream: every text's tokens, ``</s>`` between texts (a flat list of ids).
        sentences: token ids of natural sentences of 4 to 40 words, each with a leading space.
        first_sentences: the same sentences without the leading space (after a newline).
        names: distinct lowercase words of 4 to 9 letters (sorted), used as kv keys.
    """

    def __init__(self, tokenizer: Any, texts: Sequence[str], *, max_sentences: int = 20_000) -> None:
        if not texts:
            raise ValueError("texts must hold at least one text")
        self.tokenizer = tokenizer
        self.stream: list[int] = []
        for text in texts:
            self.stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            self.stream.append(tokenizer.eos_token_id)
        sentences = []
        for text in texts:
            for sentence in _SENTENCE_END.split(" ".join(text.split())):
                if 4 <= len(sentence.split()) <= 40:
                    sentences.append(sentence)
                    if len(sentences) >= max_sentences:
                        break
        if not sentences:
            sentences = list(_STANDARD_SENTENCES)
        self.sentences = tokenizer([" " + s for s in sentences], add_special_tokens=False)["input_ids"]
        self.first_sentences = tokenizer(sentences, add_special_tokens=False)["input_ids"]
        words = {w.lower() for text in texts for w in re.findall(r"\b[A-Za-z]{4,9}\b", text[:200_000])}
        self.names = sorted(words) or ["alpha", "bravo", "delta", "gamma", "kappa", "omega", "sigma", "theta"]
        self._cache: dict[str, list[int]] = {}
        special = set(tokenizer.all_special_ids)
        self._plain_ids = [i for i in range(len(tokenizer)) if i not in special]
        self.word_ids = tokenizer([" " + w for w in self.names], add_special_tokens=False)["input_ids"]

    def words(self, rng: random.Random, count: int) -> list[int]:
        """``count`` tokens of random words of :attr:`names` (unpredictable text: a word salad)."""
        out: list[int] = []
        while len(out) < count:
            out.extend(rng.choice(self.word_ids))
        return out[:count]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens), memoised."""
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def decode(self, token_id: int) -> str:
        """The text of one token."""
        return self.tokenizer.decode([token_id])

    def random_tokens(self, rng: random.Random, count: int) -> list[int]:
        """``count`` token ids drawn uniformly from the vocabulary, special tokens left out: a
        sequence whose repeats can be predicted by copying only (no language prior, and almost
        no token repeated by chance, so the copy a token starts is unambiguous)."""
        return [rng.choice(self._plain_ids) for _ in range(count)]

    def span(self, rng: random.Random, count: int) -> list[int]:
        """``count`` consecutive tokens of the stream from a random start (wrapping around)."""
        if count <= 0:
            return []
        start = rng.randrange(len(self.stream))
        out = self.stream[start : start + count]
        while len(out) < count:
            out.extend(self.stream[: count - len(out)])
        return out


def _bos(tokenizer: Any) -> list[int]:
    """``[<s>]`` when the tokenizer itself puts ``<s>`` first (as the evaluation prompts get it), else ``[]``."""
    first = tokenizer("a")["input_ids"]
    return first[:1] if first and tokenizer.bos_token_id is not None and first[0] == tokenizer.bos_token_id else []


def _filler(source: TextSource, rng: random.Random, budget: int, style: str, offset: int = 0) -> tuple[list[int], int]:
    """Whole filler sentences of at most ``budget`` tokens; returns ``(ids, sentences used)``."""
    ids: list[int] = []
    count = 0
    while True:
        if style == "standard":
            sentence = _STANDARD_SENTENCES[(offset + count) % len(_STANDARD_SENTENCES)]
            piece = source.encode(sentence if not ids else " " + sentence)
        elif style == "shuffled":
            sentence = rng.choice(_STANDARD_SENTENCES)
            piece = source.encode(sentence if not ids else " " + sentence)
        else:
            index = rng.randrange(len(source.sentences))
            piece = source.sentences[index] if ids else source.first_sentences[index]
        if len(ids) + len(piece) > budget:
            return ids, count
        ids.extend(piece)
        count += 1


def passkey_document(
    source: TextSource, length: int, rng: random.Random, *, key_digits: int = 5, filler_style: str | None = None
) -> LongRangeDocument:
    """A passkey prompt with a varied filler and its answer, padded with natural text to ``length``.

    Layout (as the evaluation prompt, then the answer)::

        <s> TASK \\n filler-before \\n KEY_LINE \\n filler-after \\n QUESTION " <key>." </s> natural text...

    The filler style is drawn uniformly from ``"standard"`` (the evaluation's sentences in
    order), ``"shuffled"`` (the same sentences in random order) and ``"natural"`` (sentences of
    the source texts) unless given; the key depth is uniform in [0, 1]. The mask is all False
    (long-range scoring uses repeats and kv lists; passkeys are measured by generation).

    Raises:
        ValueError: ``length`` too short for the prompt without filler.
    """
    tokenizer = source.tokenizer
    style = filler_style or rng.choice(("standard", "shuffled", "natural"))
    key = str(rng.randint(10 ** (key_digits - 1), 10**key_digits - 1))
    newline = source.encode("\n")
    head = _bos(tokenizer) + source.encode(TASK_DESCRIPTION) + newline
    key_line = source.encode(KEY_LINE.format(key=key)) + newline
    question = source.encode(QUESTION)
    answer = source.encode(" " + key) + source.encode(".")
    eos = [tokenizer.eos_token_id]
    fixed = len(head) + len(key_line) + len(newline) + len(question) + len(answer) + len(eos)
    budget = length - fixed - len(newline)
    if budget < 0:
        raise ValueError(f"length {length} is too short for a passkey document (needs > {fixed} tokens)")
    before_budget = round(rng.random() * budget)
    before, used = _filler(source, rng, before_budget, style)
    after, _ = _filler(source, rng, budget - len(before), style, offset=used)
    ids = head + (before + newline if before else []) + key_line + (after + newline if after else []) + question + answer + eos
    answer_start = len(ids) - len(answer) - len(eos)
    targets = [False] * length
    for t in range(answer_start, answer_start + len(answer)):
        targets[t] = True
    ids += source.span(rng, length - len(ids))
    return LongRangeDocument(ids[:length], [False] * length, "passkey", (("pass key", key),), target_mask=tuple(targets))


def _disjoint(intervals: list[tuple[int, int]], begin: int, end: int) -> bool:
    return all(end <= b or begin >= e for b, e in intervals)


def repeat_document(
    source: TextSource,
    length: int,
    rng: random.Random,
    *,
    threshold: int,
    repeats: int | None = None,
    passage_tokens: tuple[int, int] = (12, 32),
    min_distance: int | None = None,
    body: str = "text",
) -> LongRangeDocument:
    """Natural text whose later passages repeat earlier ones verbatim.

    Each repeat copies ``P`` tokens (``P`` uniform in ``passage_tokens``) from ``a`` to
    ``b = a + d``; ``d`` is uniform in ``[max(P, min_distance), length - 1 - P]`` (so every
    distance the row allows occurs), and no copied or source passage overlaps another.
    ``mask[b + k]`` is True for ``k = 1 .. P-1`` when ``d > threshold``: those tokens are
    predictable from the first occurrence only (the copy's first token is not: nothing
    announces it).

    Args:
        threshold: the distance beyond which a copy counts as long range (e.g. the base ``L``).
        repeats: passages to repeat; None: ``max(1, length // 64)`` (fewer when they do not fit).
        min_distance: smallest distance (default ``P``).
        body: what the document is made of: ``"text"`` (natural text), ``"words"`` (a salad of
            random words, so a copy can only be predicted by looking back: no language prior to
            lean on) or ``"tokens"`` (uniformly random tokens: no token repeats by chance either,
            so the copy a token starts is unambiguous).

    Returns:
        A document whose ``copies`` hold ``(a, b, size)`` and ``answers`` ``("distance", d)`` per repeat.
    """
    low, high = passage_tokens
    if not 1 <= low <= high or 2 * high + 2 > length:
        raise ValueError(f"passage_tokens {passage_tokens} do not fit twice in {length} tokens")
    if body not in ("text", "words", "tokens"):
        raise ValueError(f"body must be 'text', 'words' or 'tokens', got {body!r}")
    draw = {"text": source.span, "words": source.words, "tokens": source.random_tokens}[body]
    ids = _bos(source.tokenizer) + draw(rng, length - len(_bos(source.tokenizer)))
    start = len(_bos(source.tokenizer))
    mask = [False] * length
    used: list[tuple[int, int]] = []
    copies: list[tuple[int, int, int]] = []
    for _ in range(repeats or max(1, length // 64)):
        for _attempt in range(50):
            size = rng.randint(low, high)
            smallest = max(size, min_distance or size)
            largest = length - start - size
            if smallest > largest:
                continue
            distance = rng.randint(smallest, largest)
            a = rng.randint(start, length - size - distance)
            b = a + distance
            if _disjoint(used, a, a + size) and _disjoint(used, b, b + size):
                ids[b : b + size] = ids[a : a + size]
                used += [(a, a + size), (b, b + size)]
                copies.append((a, b, size))
                if distance > threshold:
                    for t in range(b + 1, b + size):
                        mask[t] = True
                break
    targets = tuple(any(b + 1 <= t < b + size for _, b, size in copies) for t in range(length))
    return LongRangeDocument(ids, mask, "repeat", tuple(("distance", str(b - a)) for a, b, _ in copies), tuple(copies),
                             targets)


def periodic_document(
    source: TextSource, length: int, rng: random.Random, *, threshold: int, period: tuple[int, int] = (8, 60)
) -> LongRangeDocument:
    """A pattern of ``P`` uniformly random tokens repeated until the row is full (``P`` uniform in ``period``).

    Every token after the first period copies the token ``P`` positions back (all but the second
    period's first are predictable, and scored as targets), so these rows hold
    far more copy targets than :func:`repeat_document` and at short distances: copying by content
    (induction heads) forms on them within a few hundred steps, where single copies at long
    distances take thousands (measured in docs/results.md). ``mask[t]`` is True for the copies
    when ``P > threshold``.

    Returns:
        A document whose ``copies`` hold one ``(a, a + P, size)`` per period after the first
        and whose ``answers`` hold ``("period", str(P))``.
    """
    low, high = period
    start = len(_bos(source.tokenizer))
    if not 1 <= low <= high or start + 2 * high > length:
        raise ValueError(f"period {period} does not fit twice in {length} tokens")
    size = rng.randint(low, high)
    pattern = source.random_tokens(rng, size)
    body = (pattern * (length // size + 1))[: length - start]
    ids = _bos(source.tokenizer) + body
    copies = tuple((a - size, a, min(size, length - a)) for a in range(start + size, length, size))
    targets = tuple(t > start + size for t in range(length))  # a copy's first token is not announced
    mask = [target and size > threshold for target in targets]
    return LongRangeDocument(ids, mask, "periodic", (("period", str(size)),), copies, targets)


def kv_document(
    source: TextSource,
    length: int,
    rng: random.Random,
    *,
    threshold: int,
    pairs: int | None = None,
    queries: int | None = None,
    value_digits: tuple[int, int] = (4, 6),
) -> LongRangeDocument:
    """Natural text with key-value lines hidden in it, some keys queried at the end.

    Definitions ``"\\n<name>'s number is <value>.\\n"`` sit at random points of a natural-text
    span; after it come queries ``"\\nWhat is <name>'s number? <name>'s number is <value>."``
    then ``</s>``. Names are distinct words of the source, values have ``value_digits`` digits.
    ``mask`` marks a query's value digits when the definition's value starts more than
    ``threshold`` tokens before the query's.

    Args:
        pairs: definitions; None: ``max(2, length // 48)``.
        queries: how many definitions are queried (distinct, random order); None: ``max(1, pairs // 2)``.

    Returns:
        A document whose ``answers`` are the queried ``(name, value)`` pairs, in query order.
    """
    tokenizer = source.tokenizer
    pairs = pairs or max(2, length // 48)
    queries = min(pairs, queries or max(1, pairs // 2))
    names = rng.sample(source.names, pairs)
    values = [str(rng.randint(10 ** (n - 1), 10**n - 1)) for n in (rng.randint(*value_digits) for _ in range(pairs))]
    newline = source.encode("\n")
    definitions = [newline + source.encode(KV_DEFINITION.format(name=n, value=v)) + newline for n, v in zip(names, values)]
    asked = rng.sample(range(pairs), queries)
    query_parts = []
    for i in asked:
        prompt = newline + source.encode(KV_QUERY.format(name=names[i]))
        answer = source.encode(" " + values[i]) + source.encode(".")
        query_parts.append((prompt, answer))
    bos = _bos(tokenizer)
    fixed = len(bos) + sum(map(len, definitions)) + sum(len(p) + len(a) for p, a in query_parts) + 1
    text_budget = length - fixed
    if text_budget < 0:
        raise ValueError(f"length {length} is too short for {pairs} key-value pairs and {queries} queries")
    text = source.span(rng, text_budget)
    cuts = sorted(rng.randint(0, text_budget) for _ in range(pairs))
    ids = list(bos)
    value_start: dict[int, int] = {}
    previous = 0
    for i, cut in enumerate(cuts):
        ids += text[previous:cut]
        previous = cut
        # the value's first token follows "<name>'s number is": find it by tokenizing the prefix
        prefix = newline + source.encode(KV_DEFINITION.format(name=names[i], value=values[i]).rsplit(" ", 1)[0])
        value_start[i] = len(ids) + len(prefix)
        ids += definitions[i]
    ids += text[previous:]
    mask = [False] * length
    targets = [False] * length
    for i, (prompt, answer) in zip(asked, query_parts):
        ids += prompt
        begin = len(ids)
        ids += answer
        for t in range(begin, begin + len(answer)):
            targets[t] = True
            mask[t] = begin - value_start[i] > threshold and any(c.isdigit() for c in source.decode(ids[t]))
    ids.append(tokenizer.eos_token_id)
    if len(ids) != length:  # merges across the definition's boundary: never with byte-level BPE + newlines
        raise AssertionError(f"kv document has {len(ids)} tokens, expected {length}")
    return LongRangeDocument(ids, mask, "kv", tuple((names[i], values[i]) for i in asked), target_mask=tuple(targets))


def _counts(mixture: Mapping[str, float], total: int) -> dict[str, int]:
    """Rows per kind, proportional to the weights (largest remainder, summing to ``total``)."""
    unknown = sorted(set(mixture) - set(KINDS))
    if unknown or not mixture or any(w < 0 for w in mixture.values()) or not sum(mixture.values()) > 0:
        raise ValueError(f"mixture must map kinds from {KINDS} to weights >= 0 (not all 0), got {dict(mixture)}")
    weight = sum(mixture.values())
    exact = {k: total * w / weight for k, w in mixture.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def mixture_examples(
    source: TextSource,
    length: int,
    num_rows: int,
    mixture: Mapping[str, float],
    *,
    seed: int = 0,
    threshold: int | None = None,
) -> list[dict[str, list[int]]]:
    """``num_rows`` shuffled examples of exactly ``length`` tokens, kinds in proportion to ``mixture``.

    ``"text"`` rows are windows of the source stream starting at ``<s>`` at random offsets;
    ``"repeat"`` rows repeat passages of natural text, ``"words"`` rows of a random-word salad,
    ``"tokens"`` rows of uniformly random tokens, ``"periodic"`` rows one random-token pattern
    repeated (:func:`periodic_document`); the others come from the generators above (``threshold``, default ``length // 4``, only
    shapes their long-range masks, which training ignores).

    Returns:
        ``num_rows`` dicts ``{"input_ids": [length ints], "labels": [length ints]}``: a text
        row's labels are its ids; a generated document's labels are its ids at its retrieval
        targets (``target_mask``) and ``-100`` elsewhere. The same arguments give the same rows.
    """
    if num_rows < 1 or length < 2:
        raise ValueError(f"num_rows must be >= 1 and length >= 2, got {num_rows}, {length}")
    rng = random.Random(seed)
    threshold = length // 4 if threshold is None else threshold
    rows: list[dict[str, list[int]]] = []
    counts = _counts(mixture, num_rows)
    for kind in KINDS:
        for _ in range(counts.get(kind, 0)):
            if kind == "text":
                ids = _bos(source.tokenizer) + source.span(rng, length - len(_bos(source.tokenizer)))
                rows.append({"input_ids": ids, "labels": list(ids)})
                continue
            if kind == "passkey":
                document = passkey_document(source, length, rng)
            elif kind in ("repeat", "words", "tokens"):
                body = "text" if kind == "repeat" else kind
                document = repeat_document(source, length, rng, threshold=threshold, body=body)
            elif kind == "periodic":
                document = periodic_document(source, length, rng, threshold=threshold)
            else:
                document = kv_document(source, length, rng, threshold=threshold)
            labels = [t if keep else -100 for t, keep in zip(document.input_ids, document.target_mask)]
            rows.append({"input_ids": document.input_ids, "labels": labels})
    rng.shuffle(rows)
    logger.info("mixture of %d rows of %d tokens: %s", num_rows, length, counts)
    return rows


def mixture_rows(
    source: TextSource,
    length: int,
    num_rows: int,
    mixture: Mapping[str, float],
    *,
    seed: int = 0,
    threshold: int | None = None,
) -> list[list[int]]:
    """The token ids of :func:`mixture_examples` (for language modelling on every token).

    Returns:
        ``num_rows`` lists of ``length`` ints; the same arguments give the same rows.
    """
    return [e["input_ids"] for e in mixture_examples(source, length, num_rows, mixture, seed=seed, threshold=threshold)]


def pretraining_rows(
    source: TextSource, length: int, num_rows: int, mixture: Mapping[str, float] | None = None, *, seed: int = 0
) -> list[list[int]]:
    """Pretraining rows at the base context ``length`` (default mixture :data:`PRETRAINING_MIXTURE`)."""
    return mixture_rows(source, length, num_rows, mixture or PRETRAINING_MIXTURE, seed=seed)


def pretraining_examples(
    source: TextSource, length: int, num_rows: int, mixture: Mapping[str, float] | None = None, *, seed: int = 0
) -> list[dict[str, list[int]]]:
    """:func:`pretraining_rows` with labels (retrieval targets only on generated rows)."""
    return mixture_examples(source, length, num_rows, mixture or PRETRAINING_MIXTURE, seed=seed)


def finetuning_rows(
    source: TextSource,
    length: int,
    num_rows: int,
    mixture: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    threshold: int | None = None,
) -> list[list[int]]:
    """Fine-tuning rows at the extended length: text, repeats and kv lists, never passkey prompts
    (retrieval at the extended length must come from the base).

    Raises:
        ValueError: the mixture gives passkey documents a weight.
    """
    examples = finetuning_examples(source, length, num_rows, mixture, seed=seed, threshold=threshold)
    return [e["input_ids"] for e in examples]


def finetuning_examples(
    source: TextSource,
    length: int,
    num_rows: int,
    mixture: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    threshold: int | None = None,
) -> list[dict[str, list[int]]]:
    """:func:`finetuning_rows` with labels (retrieval targets only on generated rows); never passkeys."""
    mixture = dict(mixture or FINETUNING_MIXTURE)
    if mixture.get("passkey", 0) > 0:
        raise ValueError("fine-tuning rows never hold passkey prompts (retrieval must come from the base)")
    mixture.pop("passkey", None)
    return mixture_examples(source, length, num_rows, mixture, seed=seed, threshold=threshold)


def long_range_documents(
    source: TextSource, length: int, count: int, *, threshold: int, kinds: Sequence[str] = ("repeat", "kv"), seed: int = 0
) -> list[LongRangeDocument]:
    """``count`` evaluation documents of ``length`` tokens, alternating ``kinds``, masks beyond ``threshold``."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "repeat":
            out.append(repeat_document(source, length, rng, threshold=threshold, min_distance=threshold + 1))
        elif kind == "kv":
            out.append(kv_document(source, length, rng, threshold=threshold))
        else:
            raise ValueError(f"long-range evaluation kinds are 'repeat' and 'kv', got {kind!r}")
    return out
