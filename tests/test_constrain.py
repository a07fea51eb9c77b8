"""Structured output on random-weight models: the model knows nothing, yet every output must
parse and validate, match the regex or equal a choice."""

import json
import re

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

import mlx_slm.constrain as constrain
from mlx_slm.chooser import TokenChooser
from mlx_slm.errors import SlmError
from mlx_slm.generation import generate_tokens, stream_text
from mlx_slm.loader import load
from mlx_slm.sample import SamplingOptions

SEEDS = (0, 1, 2)
TEMPERATURES = (0.0, 0.7, 1.5)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -5, "maximum": 5},
        "member": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "score", "member", "role", "tags", "address"],
    "additionalProperties": False,
}

# Strings whose JSON needs escapes, and non-ASCII text, as values the output must reproduce.
ESCAPES = {
    "type": "object",
    "properties": {
        "quoted": {"enum": ['say "hi"', "back\\slash", "tab\there", "line\nbreak"]},
        "unicode": {"enum": ["naïve", "日本語", "Ελλάδα", "emoji 🙂"]},
        "symbols": {"type": "string", "pattern": '^["\\\\αβγ]{1,4}$'},
        "fixed": {"const": "São Tomé"},
    },
    "required": ["quoted", "unicode", "symbols", "fixed"],
    "additionalProperties": False,
}

REGEXES = (
    r"[A-Z][a-z]{1,8} [0-9]{2}",
    r"(yes|no|maybe)",
    r"[0-9]{3}-[0-9]{4}",
    r"[a-z]{1,6}@[a-z]{1,6}\.(com|org)",
    r"[äöüß]{2,4}!",
)

CHOICES = ("Sacramento", "Los Angeles", "San Francisco", "São Tomé", 'say "no"')


@pytest.fixture(scope="module")
def loaded(model_dir):
    model, tokenizer = load(model_dir)
    return model, tokenizer, constrain.GrammarVocabulary(tokenizer)


def run(loaded, spec, *, temperature=0.0, seed=0, max_tokens=200, prompt="Answer:",
        processors=(), **kwargs):
    model, tokenizer, vocab = loaded
    ids = tokenizer.encode(prompt)
    sampling = SamplingOptions(temperature=temperature, seed=seed, repetition_penalty=1.0)
    chooser = TokenChooser(sampling, ids, constrain.Constraint(spec, vocab),
                           processors=processors)
    return stream_text(model, tokenizer, ids, max_tokens=max_tokens, chooser=chooser, **kwargs)


def runs(loaded, spec, **kwargs):
    """Greedy once, and sampled at each other temperature with each seed."""
    yield run(loaded, spec, **kwargs)
    for temperature in TEMPERATURES[1:]:
        for seed in SEEDS:
            yield run(loaded, spec, temperature=temperature, seed=seed, **kwargs)


@pytest.mark.parametrize("schema", [PERSON, ESCAPES], ids=["nested", "escapes"])
def test_json_schema_output_validates(loaded, schema):
    for result in runs(loaded, constrain.json_schema(schema), max_tokens=256):
        assert result.finish_reason == "eos", result.text
        assert result.valid
        jsonschema.validate(json.loads(result.text), schema)


def test_schema_as_json_text_equals_dict(loaded):
    a = run(loaded, constrain.json_schema(PERSON), max_tokens=256)
    b = run(loaded, constrain.json_schema(json.dumps(PERSON)), max_tokens=256)
    assert a.tokens == b.tokens


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_output_matches(loaded, pattern):
    for result in runs(loaded, constrain.regex(pattern)):
        assert result.finish_reason == "eos" and result.valid
        assert re.fullmatch(pattern, result.text), result.text


def test_choice_output_is_one_of_them(loaded):
    for prompt in ("Answer:", "The capital of California is"):
        for result in runs(loaded, constrain.choice(CHOICES), prompt=prompt):
            assert result.text in CHOICES
            assert result.finish_reason == "eos" and result.valid


def closing_bias(tokenizer):
    """A stand-in for a model that likes to finish: it favours quotes, and '"}' most."""
    bias = np.zeros(tokenizer.vocab_size, np.float32)
    bias[tokenizer.sp.piece_to_id('"')] = 8.0
    bias[tokenizer.sp.piece_to_id('"}')] = 12.0
    bias = mx.array(bias)[None]
    return lambda history, logits: logits + bias


def test_any_json_object(loaded):
    _, tokenizer, _ = loaded
    for result in runs(loaded, constrain.json_object(),
                       processors=[closing_bias(tokenizer)]):
        assert result.finish_reason == "eos", result.text
        assert isinstance(json.loads(result.text), dict)


def test_greedy_is_deterministic(loaded):
    spec = constrain.json_schema(PERSON)
    first, second = (run(loaded, spec, max_tokens=256) for _ in range(2))
    assert first.tokens == second.tokens and first.text == second.text


def test_compiled_and_uncompiled_steps_agree(loaded):
    model, tokenizer, vocab = loaded
    spec = constrain.regex(REGEXES[0])
    prompt = tokenizer.encode("Name and age:")
    compiled, plain = (
        list(generate_tokens(model, prompt, max_tokens=40, stop_ids=(tokenizer.eos_id,),
                             chooser=TokenChooser(history=prompt,
                                                  constraint=constrain.Constraint(spec, vocab)),
                             compiled=c))
        for c in (True, False)
    )
    assert compiled == plain


def _decoded_bytes(tokenizer, ids: list[int], token: int) -> bytes:
    """What appending `token` to `ids` adds to SentencePiece's decoded text, as bytes."""
    piece = tokenizer.piece_table()[token]
    if isinstance(piece, int):
        return bytes([piece])
    return tokenizer.decode([*ids, token]).encode()[len(tokenizer.decode(ids).encode()):]


def test_masks_equal_a_reference_from_sentencepiece(loaded):
    """The allowed set is every token whose decoded text keeps the output a prefix of a
    choice: on the first token (whose leading space SentencePiece drops) and after it."""
    _, tokenizer, vocab = loaded
    choices = [c.encode() for c in CHOICES]
    constraint = constrain.Constraint(constrain.choice(CHOICES), vocab)
    taken = []
    for _ in range(2):
        done = b"".join(_decoded_bytes(tokenizer, taken[:i], t) for i, t in enumerate(taken))
        expected = set()
        for token in range(tokenizer.vocab_size):
            if tokenizer.piece_table()[token] is None or token == tokenizer.sp.unk_id():
                continue
            text = done + _decoded_bytes(tokenizer, taken, token)
            if len(text) > len(done) and any(c.startswith(text) for c in choices):
                expected.add(token)
        allowed = set(np.flatnonzero(constraint.allowed()).tolist())
        assert allowed == expected
        # "S" leaves four choices open: no stretch is forced, so every split is allowed.
        token = tokenizer.sp.piece_to_id("\u2581S") if not taken else min(allowed)
        constraint.accept(token)
        taken.append(token)


def boost(token: int, amount: float = 1e4):
    return lambda history, logits: logits + amount * (mx.arange(logits.shape[-1]) == token)


def test_eos_only_once_the_grammar_accepts(loaded):
    _, tokenizer, _ = loaded
    # Llama-2 splits numbers into single digits, so EOS is first allowed after three tokens.
    result = run(loaded, constrain.regex("[0-9]{3,8}"),
                 processors=[boost(tokenizer.eos_id)])
    assert result.finish_reason == "eos" and len(result.text) == 3 and result.valid
    assert tokenizer.eos_id not in result.tokens


def test_a_complete_output_ends_without_waiting_for_eos(loaded):
    result = run(loaded, constrain.choice(["Sacramento"]), max_tokens=50)
    assert result.text == "Sacramento" and result.finish_reason == "eos"
    assert result.tokens[-1] != loaded[1].eos_id


def test_length_limit_is_reported_and_not_valid(loaded):
    result = run(loaded, constrain.json_schema(PERSON), max_tokens=5)
    assert result.finish_reason == "length" and result.valid is False
    assert len(result.tokens) == 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


def test_stop_string_cuts_a_constrained_output(loaded):
    spec = constrain.choice(["Los Angeles"])
    cut = run(loaded, spec, stop_strings=("Angeles",))
    assert cut.text == "Los " and cut.finish_reason == "stop" and cut.valid is False
    whole = run(loaded, spec, stop_strings=("Fresno",))
    assert whole.text == "Los Angeles" and whole.finish_reason == "eos" and whole.valid


def test_unconstrained_generation_reports_no_validity(loaded):
    model, tokenizer, _ = loaded
    result = stream_text(model, tokenizer, tokenizer.encode("Hi"), max_tokens=4)
    assert result.valid is None


@pytest.mark.parametrize("make, words", [
    (lambda: constrain.json_schema('{"type": "objec"}'), "Invalid JSON schema"),
    (lambda: constrain.json_schema("{not json"), "not valid JSON"),
    (lambda: constrain.json_schema("[1, 2]"), "must be a JSON object"),
    (lambda: constrain.json_schema({"properties": {"a": {"pattern": "("}}}), "unclosed group"),
    (lambda: constrain.regex("(ab"), "Invalid regular expression"),
    (lambda: constrain.regex("a{2,1}"), "Invalid regular expression"),
    (lambda: constrain.choice([]), "at least one"),
    (lambda: constrain.choice(["a", ""]), "non-empty"),
])
def test_invalid_constraints_fail_with_one_line(make, words):
    with pytest.raises(SlmError) as error:
        make()
    assert words in str(error.value) and "\n" not in str(error.value)


def test_describe_reports_kind_and_value():
    assert constrain.regex("a+").describe() == {"type": "regex", "value": "a+"}
    assert constrain.choice(["x", "y"]).describe() == {"type": "choice", "value": ["x", "y"]}
    assert constrain.json_schema({"type": "object"}).describe() == {
        "type": "json_schema", "value": {"type": "object"}}
    assert constrain.json_object().describe() == {"type": "json_object", "value": None}


def test_matches_checks_whole_texts(loaded):
    constraint = constrain.Constraint(constrain.regex("[0-9]{2}"), loaded[2])
    assert constraint.matches("42")
    assert not constraint.matches("4") and not constraint.matches("421")


def test_batched_rows_equal_one_at_a_time(loaded):
    """Each row of a batch has its own grammar and gets what it would get alone."""
    from mlx_slm.batch_generation import BatchGenerator, Row

    model, tokenizer, vocab = loaded
    specs = [constrain.regex(REGEXES[0]), constrain.choice(CHOICES),
             constrain.json_schema(PERSON)]
    prompts = [tokenizer.encode(p) for p in ("Name:", "The capital is", "A person as JSON:")]
    stops = (tokenizer.eos_id,)
    alone = [list(generate_tokens(model, p, max_tokens=120, stop_ids=stops, chooser=TokenChooser(
        history=p, constraint=constrain.Constraint(s, vocab)))) for p, s in zip(prompts, specs)]
    batch = [Row(p, TokenChooser(history=p, constraint=constrain.Constraint(s, vocab)), 120,
                 stops) for p, s in zip(prompts, specs)]
    generator = BatchGenerator(model)
    generator.join(batch)
    while len(generator):
        generator.step()
    rows = [r.tokens for r in batch]
    assert rows == alone
    jsonschema.validate(json.loads(tokenizer.decode(rows[2])), PERSON)
