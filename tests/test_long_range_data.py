"""The long-range documents of issue 9 (the benchmark itself: test_long_context_benchmark.py)."""

from __future__ import annotations

import random
import re
from dataclasses import asdict

import pytest

from hf_sinklora.data.local_corpus import stdlib_source_files, train_bpe_tokenizer
from hf_sinklora.data.sources import load_texts
from hf_sinklora.evaluation.passkey_prompt import KEY_LINE, QUESTION, TASK_DESCRIPTION, make_passkey_prompt
from hf_sinklora.experiment import long_range as lr
from hf_sinklora.experiment.base_model import BaseModelRecipe, _cache_key, recipe_key_fields



@pytest.fixture(scope="module")
def source() -> lr.TextSource:
    texts = load_texts(stdlib_source_files(limit=12))
    tokenizer = train_bpe_tokenizer(texts, 1024, individual_digits=True)
    return lr.TextSource(tokenizer, texts)


def test_individual_digits_option_only_changes_numbers():
    texts = load_texts(stdlib_source_files(limit=4))
    merged = train_bpe_tokenizer(texts, 512)
    split = train_bpe_tokenizer(texts, 512, individual_digits=True)
    assert split.tokenize(" 71432") == ["Ġ", "7", "1", "4", "3", "2"]
    assert split.decode(split(" The pass key is 71432.")["input_ids"]) == " The pass key is 71432."
    assert merged.decode(merged(" 71432 x")["input_ids"]) == " 71432 x"


@pytest.mark.parametrize("length", [128, 512])
def test_documents_have_exact_lengths_and_are_deterministic(source, length):
    for make in (lr.passkey_document, lambda s, n, r: lr.repeat_document(s, n, r, threshold=128),
                 lambda s, n, r: lr.kv_document(s, n, r, threshold=128),
                 lambda s, n, r: lr.periodic_document(s, n, r, threshold=128)):
        first = [make(source, length, random.Random(seed)) for seed in range(5)]
        again = [make(source, length, random.Random(seed)) for seed in range(5)]
        assert first == again
        assert len({tuple(d.input_ids) for d in first}) == 5
        for document in first:
            assert len(document.input_ids) == len(document.long_range_mask) == length
            assert document.input_ids[0] != source.tokenizer.bos_token_id  # no <s>: the prompts have none


def test_passkey_document_holds_the_evaluation_prompt_and_its_answer(source):
    rng = random.Random(3)
    styles = set()
    for _ in range(12):
        document = lr.passkey_document(source, 256, rng)
        (_, key), = document.answers
        text = source.tokenizer.decode(document.input_ids, skip_special_tokens=True)
        assert text.startswith(TASK_DESCRIPTION + "\n")
        assert KEY_LINE.format(key=key) in text
        assert QUESTION + " " + key + "." in text
        styles.add("grass" in text)
        assert not any(document.long_range_mask)
    assert styles == {True, False}  # varied fillers: the standard one and others
    # the standard-filler prompt tokenizes as the evaluation prompt does, up to the question
    document = lr.passkey_document(source, 256, random.Random(0), filler_style="standard")
    (_, key), = document.answers
    prompt = make_passkey_prompt(source.tokenizer, 256, 0.0, key)
    question_end = document.input_ids.index(source.tokenizer.eos_token_id) - len(source.encode(" " + key + "."))
    assert document.input_ids[:question_end][-len(source.encode(QUESTION)):] == prompt.input_ids[-len(source.encode(QUESTION)):]


@pytest.mark.parametrize("body", ["text", "words", "tokens"])
@pytest.mark.parametrize("threshold", [32, 128])
def test_repeat_mask_marks_exactly_the_long_range_copies(source, threshold, body):
    rng = random.Random(1)
    seen_long = seen_short = 0
    for _ in range(20):
        document = lr.repeat_document(source, 512, rng, threshold=threshold, body=body)
        assert document.copies
        expected = [False] * 512
        for a, b, size in document.copies:
            assert b - a >= size  # the copy never overlaps its source
            assert document.input_ids[b:b + size] == document.input_ids[a:a + size]
            if b - a > threshold:
                seen_long += 1
                for t in range(b + 1, b + size):
                    expected[t] = True
            else:
                seen_short += 1
        assert document.long_range_mask == expected
    assert seen_long and seen_short


def test_random_token_bodies_use_the_whole_plain_vocabulary_and_no_special_token(source):
    document = lr.repeat_document(source, 512, random.Random(3), threshold=64, body="tokens")
    special = set(source.tokenizer.all_special_ids)
    body = document.input_ids[1:] if document.input_ids[0] == source.tokenizer.bos_token_id else document.input_ids
    assert not special & set(body)
    assert len(set(body)) > 300  # 512 draws from ~1000 ids: far more distinct ids than a text or word salad holds
    with pytest.raises(ValueError, match="body must be"):
        lr.repeat_document(source, 512, random.Random(3), threshold=64, body="digits")


@pytest.mark.parametrize("threshold", [8, 128])
def test_periodic_rows_repeat_one_pattern_and_score_every_announced_copy(source, threshold):
    for seed in range(10):
        document = lr.periodic_document(source, 128, random.Random(seed), threshold=threshold)
        ids, period = document.input_ids, int(document.answers[0][1])
        assert 8 <= period <= 60 and document.kind == "periodic"
        assert all(ids[t] == ids[t - period] for t in range(period, 128))
        assert len(set(ids[:period])) > period // 2  # random tokens, not one repeated id
        targets = [t for t, on in enumerate(document.target_mask) if on]
        assert targets == list(range(period + 1, 128))  # the second period's first token is not announced
        assert document.long_range_mask == [t in targets and period > threshold for t in range(128)]
        assert [(a, b) for a, b, _ in document.copies] == [(b - period, b) for b in range(period, 128, period)]
    with pytest.raises(ValueError, match="period"):
        lr.periodic_document(source, 99, random.Random(0), threshold=8, period=(8, 50))


def test_evaluation_repeats_are_all_long_range(source):
    documents = lr.long_range_documents(source, 512, 4, threshold=128, kinds=("repeat",), seed=0)
    assert all(b - a > 128 for d in documents for a, b, _ in d.copies)
    assert all(any(d.long_range_mask) for d in documents)
    assert documents == lr.long_range_documents(source, 512, 4, threshold=128, kinds=("repeat",), seed=0)


def test_kv_answers_are_the_defined_values_and_the_mask_marks_them(source):
    rng = random.Random(2)
    for _ in range(10):
        document = lr.kv_document(source, 512, rng, threshold=64)
        text = source.tokenizer.decode(document.input_ids, skip_special_tokens=True)
        for name, value in document.answers:
            found = re.findall(re.escape(f"{name}'s number is ") + r"(\d+)\.", text)
            assert found == [value, value]  # the definition, then the query's answer
            assert f"What is {name}'s number?" in text
        masked = "".join(source.decode(t) for t, m in zip(document.input_ids, document.long_range_mask) if m)
        assert masked.isdigit() or masked == ""
        assert set(masked) <= set("".join(v for _, v in document.answers))
    far = lr.kv_document(source, 512, random.Random(0), threshold=0)
    assert "".join(source.decode(t) for t, m in zip(far.input_ids, far.long_range_mask) if m) == "".join(
        v for _, v in far.answers)


def test_mixtures_are_exact_deterministic_and_finetuning_has_no_passkey(source):
    rows = lr.pretraining_rows(source, 128, 40, seed=5)
    assert rows == lr.pretraining_rows(source, 128, 40, seed=5)
    assert len(rows) == 40 and {len(r) for r in rows} == {128}
    texts = [source.tokenizer.decode(r) for r in rows]
    assert sum(TASK_DESCRIPTION in t for t in texts) == 8  # 20% of 40 are passkeys
    tuned = lr.finetuning_rows(source, 512, 30, seed=5, threshold=128)
    assert len(tuned) == 30 and {len(r) for r in tuned} == {512}
    for row in tuned:
        text = source.tokenizer.decode(row)
        assert "pass key" not in text and "important info" not in text
    assert sum("'s number is" in source.tokenizer.decode(r) for r in tuned) >= 6  # 20% of 30 are kv lists
    with pytest.raises(ValueError, match="never hold passkey"):
        lr.finetuning_rows(source, 512, 4, {"text": 1.0, "passkey": 0.1})
    with pytest.raises(ValueError, match="mixture"):
        lr.mixture_rows(source, 128, 4, {"txt": 1.0})


def test_recipe_defaults_keep_the_old_cache_key():
    old = BaseModelRecipe(steps=600, context_length=256)
    assert recipe_key_fields(old) == {k: v for k, v in asdict(old).items()
                                     if k not in ("individual_digits", "mixture", "warmup_steps", "max_grad_norm", "loss", "add_bos",
                                                  "induction_steps", "induction_learning_rate", "induction_kind")}
    new = BaseModelRecipe(individual_digits=True, mixture={"text": 1, "kv": 1}.items(), warmup_steps=100)
    assert new.mixture == (("kv", 1.0), ("text", 1.0)) and new.warmup == 100 and old.warmup == 30
    assert _cache_key([], new) != _cache_key([], BaseModelRecipe())
    with pytest.raises(ValueError):
        BaseModelRecipe(mixture=(("nope", 1.0),))
    # the induction phase's rate is part of the key only when the phase runs
    assert _cache_key([], BaseModelRecipe(induction_learning_rate=1e-3)) == _cache_key([], BaseModelRecipe())
    two_phase = BaseModelRecipe(induction_steps=10)
    assert _cache_key([], two_phase) != _cache_key([], BaseModelRecipe())
    assert _cache_key([], two_phase) != _cache_key([], BaseModelRecipe(induction_steps=10, induction_learning_rate=1e-3))
    # so is the kind of its rows: "tokens", the default, keeps the key of bases built before the choice
    assert _cache_key([], BaseModelRecipe(induction_kind="periodic")) == _cache_key([], BaseModelRecipe())
    assert "induction_kind" not in recipe_key_fields(two_phase)
    periodic = BaseModelRecipe(induction_steps=10, induction_kind="periodic")
    assert recipe_key_fields(periodic)["induction_kind"] == "periodic"
    assert _cache_key([], periodic) != _cache_key([], two_phase)
    for bad in ({"induction_steps": -1}, {"induction_steps": 1.5}, {"induction_learning_rate": 0.0},
                {"induction_kind": "words"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BaseModelRecipe(**bad)


def test_two_phase_pretraining_starts_on_random_token_repeats(tmp_path, monkeypatch):
    """Phase 1 trains on random-token rows scored on their copies only, at a constant rate; phase 2
    on the mixture with the cosine schedule; the same model goes through both and the recipe file
    keeps both loss curves."""
    from hf_sinklora.experiment import base_model

    phases = []
    real_phase = base_model._train_phase

    def record(model, tokenizer, recipe, output_dir, **kwargs):
        phases.append({**kwargs, "model": model})
        return real_phase(model, tokenizer, recipe, output_dir, **kwargs)

    monkeypatch.setattr(base_model, "_train_phase", record)
    texts = load_texts(stdlib_source_files(limit=6))
    recipe = BaseModelRecipe(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                             context_length=128, steps=2, batch_size=2, individual_digits=True,
                             mixture={"text": 1.0, "kv": 1.0}.items(), loss="rows", induction_steps=3,
                             induction_learning_rate=5e-3)
    path = base_model.pretrain_base_model(texts, recipe, tmp_path / "base")
    first, second = phases
    assert first["model"] is second["model"]
    assert (first["steps"], first["learning_rate"], first["scheduler"], first["warmup"]) == (3, 5e-3, "constant", 0)
    assert (second["steps"], second["learning_rate"], second["scheduler"]) == (2, recipe.learning_rate, "cosine")
    assert len(first["rows"]) == 6 and len(second["rows"]) == 4
    for ids, labels in zip(first["rows"], first["labels"]):
        scored = [t for t, label in enumerate(labels) if label != -100]
        assert scored and len(scored) < len(ids) // 2  # copies only
        assert all(labels[t] == ids[t] for t in scored)
        assert any(ids[t] == ids[u] for t in scored for u in range(t))  # a scored token occurs earlier
    written = __import__("json").loads((path / base_model.RECIPE_FILE).read_text())
    assert written["induction_steps"] == 3 and len(written["induction_losses"]) == 3 and len(written["losses"]) == 2


def test_pretraining_examples_label_only_retrieval_targets_on_generated_rows(source):
    examples = lr.pretraining_examples(source, 128, 20, seed=1)
    assert [e["input_ids"] for e in examples] == lr.pretraining_rows(source, 128, 20, seed=1)
    kinds = {"text": 0, "generated": 0}
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        if labels == ids:
            kinds["text"] += 1
            continue
        kinds["generated"] += 1
        scored = [t for t, label in zip(ids, labels) if label != -100]
        assert scored and all(label in (-100, t) for t, label in zip(ids, labels))
    assert kinds == {"text": 8, "generated": 12}  # 40% text
    document = lr.passkey_document(source, 128, random.Random(4))
    answer = "".join(source.decode(t) for t, m in zip(document.input_ids, document.target_mask) if m)
    assert answer == " " + document.answers[0][1] + "."


def test_finetuning_examples_have_no_passkey_and_label_targets(source):
    examples = lr.finetuning_examples(source, 512, 10, seed=2, threshold=128)
    assert [e["input_ids"] for e in examples] == lr.finetuning_rows(source, 512, 10, seed=2, threshold=128)
    for example in examples:
        assert "pass key" not in source.tokenizer.decode(example["input_ids"])
        assert len(example["labels"]) == 512
    with pytest.raises(ValueError, match="never hold passkey"):
        lr.finetuning_examples(source, 512, 4, {"passkey": 1.0})
