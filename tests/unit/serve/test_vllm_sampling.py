"""What a request's sampling becomes in vLLM: special tokens kept out of structured answers."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import xgrammar
from transformers import AutoConfig

from loraloop.serve.engine.interface import OutputConstraint, SamplingSpec
from loraloop.serve.engine.vllm_engine import sampling_params, unwritten_specials
from loraloop.serve.openai.structured import check_schema
from loraloop.serve.settings import RequestLimits


def test_structured_answers_never_sample_special_tokens_the_text_would_drop(tokenizer, demo_model):
    """The grammar backend counts `<|bos|>` as 7 characters of a string, the detokenizer
    drops it: a `sku` of minLength 2 came back empty. Such tokens are banned whenever the
    answer is constrained and its text leaves special tokens out."""
    schema = check_schema(
        {"type": "string", "minLength": 2, "maxLength": 12}, "response_format", RequestLimits()
    )
    matcher = xgrammar.GrammarMatcher(
        xgrammar.GrammarCompiler(
            xgrammar.TokenizerInfo.from_huggingface(tokenizer)
        ).compile_json_schema(schema)
    )
    bos = tokenizer.convert_tokens_to_ids("<|bos|>")
    assert matcher.accept_string('"') and matcher.accept_token(bos) and matcher.accept_string('"')
    assert tokenizer.decode([bos], skip_special_tokens=True) == ""

    model_config = SimpleNamespace(hf_config=AutoConfig.from_pretrained(demo_model))
    unwritten = unwritten_specials(tokenizer, model_config)
    assert bos in unwritten and tokenizer.eos_token_id not in unwritten  # answers still end
    constrained = SamplingSpec(
        max_tokens=8, logit_bias=((5, 2.0),), constraint=OutputConstraint("json_object")
    )
    assert sampling_params(constrained, unwritten).logit_bias == {
        5: 2.0,
        **dict.fromkeys(unwritten, -100.0),
    }
    # Kept in the text (tool-call markers some tokenizers call special), or unconstrained:
    # nothing is banned.
    for spec in (
        replace(constrained, skip_special_tokens=False),
        replace(constrained, constraint=None),
    ):
        assert sampling_params(spec, unwritten).logit_bias == {5: 2.0}
