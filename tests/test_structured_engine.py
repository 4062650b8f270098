"""Structured outputs in the engine: constrained rows share batches with free ones, n > 1 and
preemption keep per-choice grammar state, a finished grammar stops the choice, and hostile
constraints are refused fast, before anything runs (tiny random Llama; the default model's
output quality is tested over HTTP in test_http_structured.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from test_engine_invariants import assert_idle, make_prompts, new_llm

from model import AsyncEngine, EngineConfig, InvalidParamError, SamplingParams, StructuredOutputs

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "tags", "n"],
    "additionalProperties": False,
}
CONSTRAINTS = [
    StructuredOutputs(json=SCHEMA),
    StructuredOutputs(regex=r"[a-z]{2,5}-\d{1,3}"),
    StructuredOutputs(choice=["yes", "no", "maybe"]),
    StructuredOutputs(grammar='start: "(" item ("," item)* ")"\nitem: /[0-9]+/'),
    StructuredOutputs(json_object=True),
]


def params(constraint: StructuredOutputs | None, **kw) -> SamplingParams:
    opts = dict(temperature=0, max_tokens=48, structured_outputs=constraint)
    opts.update(kw)
    return SamplingParams(**opts)


def check_output(constraint: StructuredOutputs, text: str) -> None:
    kind = constraint.kind
    if kind == "json":
        import jsonschema

        jsonschema.validate(json.loads(text), constraint.json)
    elif kind == "json_object":
        assert isinstance(json.loads(text), dict)
    elif kind == "regex":
        assert re.fullmatch(constraint.regex, text), text
    elif kind == "choice":
        assert text in constraint.choice
    else:
        assert re.fullmatch(r"\([0-9]+(,[0-9]+)*\)", text), text


def test_constrained_outputs_follow_their_constraint(tiny_llm):
    prompts = make_prompts(len(CONSTRAINTS), seed=21)
    outs = tiny_llm.generate(prompts, [params(c, max_tokens=200) for c in CONSTRAINTS])
    for constraint, out in zip(CONSTRAINTS, outs):
        choice = out.outputs[0]
        if choice.finish_reason == "stop":  # the grammar ended (or EOS once it accepted)
            check_output(constraint, choice.text)
        else:  # a random model may run out of tokens inside an unbounded JSON object; never off-grammar
            assert constraint.kind in ("json_object",) and choice.text.startswith("{")
    assert_idle(tiny_llm)


def test_mixed_batch_equals_alone(tiny_llm):
    """Constrained and free rows in one batch give what each gives alone (temperature 0)."""
    prompts = make_prompts(8, seed=22)
    mix = [params(CONSTRAINTS[i % len(CONSTRAINTS)] if i % 2 else None) for i in range(len(prompts))]
    together = [o.outputs[0].token_ids for o in tiny_llm.generate(prompts, mix)]
    alone = [tiny_llm.generate([p], sp)[0].outputs[0].token_ids for p, sp in zip(prompts, mix)]
    assert together == alone
    assert_idle(tiny_llm)


def test_choice_finishes_with_stop_at_the_end_of_the_grammar(tiny_llm):
    out = tiny_llm.generate([[5, 6, 7]], params(StructuredOutputs(choice=["alpha", "beta"]), ignore_eos=True))[0]
    assert out.outputs[0].text in ("alpha", "beta")
    assert out.outputs[0].finish_reason == "stop"  # ignore_eos does not make it run past the grammar


def test_n_choices_and_seeds_keep_their_own_state(tiny_llm):
    constraint = StructuredOutputs(regex=r"[a-c]{3}[0-9]{2}")
    out = tiny_llm.generate([[9, 10, 11]], params(constraint, n=4, temperature=1.0, seed=3))[0]
    texts = [c.text for c in out.outputs]
    assert all(re.fullmatch(constraint.regex, t) for t in texts), texts
    assert len(set(texts)) > 1
    again = tiny_llm.generate([[9, 10, 11]], params(constraint, n=4, temperature=1.0, seed=3))[0]
    assert [c.text for c in again.outputs] == texts
    assert_idle(tiny_llm)


def test_preemption_keeps_the_grammar_state(tiny_llama_dir, tiny_llm):
    """A pool so small that sequences are preempted and recomputed: same constrained outputs."""
    prompts = make_prompts(8, seed=23, lo=40, hi=60)
    long = StructuredOutputs(regex=r"[0-9]{56}")  # a token per digit: long enough to fill the pool
    sp = [params(long if i % 4 else CONSTRAINTS[i // 4], max_tokens=80) for i in range(len(prompts))]
    expected = [o.outputs[0].token_ids for o in tiny_llm.generate(prompts, sp)]
    small = new_llm(tiny_llama_dir, kv_cache_memory=512 * 16 * 40, max_model_len=256, max_num_seqs=8)
    got = [o.outputs[0].token_ids for o in small.generate(prompts, sp)]
    assert got == expected
    assert small.engine.stats().num_preemptions > 0
    assert_idle(small)


HOSTILE = {
    "deep schema": lambda: StructuredOutputs(json=_nested(10_000)),
    "100k properties": lambda: StructuredOutputs(json={"type": "object", "properties": _props(100_000)}),
    "1 MB regex": lambda: StructuredOutputs(regex="a" * 1_000_000),
    "unknown $ref": lambda: StructuredOutputs(json={"$ref": "#/$defs/missing"}),
    "bad regex": lambda: StructuredOutputs(regex="(("),
    "bad grammar": lambda: StructuredOutputs(grammar="start: nothing_defined_here"),
    "non-object schema": lambda: StructuredOutputs(json="[1, 2]"),
    "schema text too deep": lambda: StructuredOutputs(json="[" * 100_000 + "]" * 100_000),
}


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _props(n: int) -> dict:
    return {f"p{i}": {"type": "integer"} for i in range(n)}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_constraints_are_refused_fast(tiny_llm, case):
    spec = HOSTILE[case]()
    t0 = time.monotonic()
    with pytest.raises(InvalidParamError) as err:
        tiny_llm.generate([[5, 6]], params(spec))
    assert time.monotonic() - t0 < 1.0
    assert err.value.param == "structured_outputs"
    assert_idle(tiny_llm)


def test_two_sources_are_refused():
    with pytest.raises(InvalidParamError, match="exactly one") as err:
        StructuredOutputs(json={"type": "object"}, regex="a", param="guided_regex")
    assert err.value.param == "guided_regex"


def test_async_submit_refuses_before_queueing_and_engine_keeps_serving(tiny_llama_dir):
    engine = AsyncEngine(EngineConfig(model=tiny_llama_dir, dtype="float32", device="cpu", kv_cache_memory=8 << 20))
    engine.start()
    try:

        async def main():
            with pytest.raises(InvalidParamError):
                await engine.submit([5, 6, 7], params(StructuredOutputs(regex="(")))
            stream = await engine.submit([5, 6, 7], params(StructuredOutputs(choice=["on", "off"])))
            outs = [o async for o in stream]
            return outs[-1].outputs[0].text

        assert asyncio.run(main()) in ("on", "off")
    finally:
        engine.shutdown()
