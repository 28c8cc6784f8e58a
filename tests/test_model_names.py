"""Every model name the installed official SDKs list resolves to a profile and is served (no 404).

The names are read from the SDKs' own type definitions at test time, so a newer
SDK with new names fails here until profiles/*.yaml covers them.
"""

from __future__ import annotations

import typing

import anthropic
import openai
import pytest
import requests
from anthropic.types import Model as AnthropicModel
from openai.types import EmbeddingModel
from openai.types.completion_create_params import CompletionCreateParamsBase
from openai.types.shared import ChatModel, ResponsesModel

from llmsim.anthropic.models import listed_ids
from llmsim.profiles import default_registry
from llmsim.testing import run_server


def literal_names(tp: object) -> list[str]:
    """Every string of the Literal types inside `tp` (through Union, Required, Optional, ...)."""
    if typing.get_origin(tp) is typing.Literal:
        return [a for a in typing.get_args(tp) if isinstance(a, str)]
    return [n for arg in typing.get_args(tp) for n in literal_names(arg)]


OPENAI_CHAT = sorted(set(literal_names(ChatModel)) | set(literal_names(ResponsesModel)))
OPENAI_COMPLETIONS = sorted(literal_names(typing.get_type_hints(CompletionCreateParamsBase,
                                                                include_extras=True)["model"]))
OPENAI_EMBEDDINGS = sorted(literal_names(EmbeddingModel))
ANTHROPIC = sorted(literal_names(AnthropicModel))


def test_the_sdks_list_names():
    # Guards the reading itself: an SDK that moved its types would otherwise pass vacuously.
    assert len(OPENAI_CHAT) > 50 and "gpt-4o" in OPENAI_CHAT
    assert "gpt-3.5-turbo-instruct" in OPENAI_COMPLETIONS
    assert set(OPENAI_EMBEDDINGS) == {"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"}
    assert len(ANTHROPIC) > 5 and all(n.startswith("claude-") for n in ANTHROPIC)


@pytest.mark.parametrize("name", OPENAI_CHAT + OPENAI_COMPLETIONS + OPENAI_EMBEDDINGS + ANTHROPIC)
def test_every_sdk_model_name_matches_a_profile(name):
    assert default_registry().match(name) is not None, f"{name}: no profile covers it (profiles/*.yaml)"


def test_embedding_models_are_embedding_profiles_and_the_others_generate():
    reg = default_registry()
    assert {n: reg.match(n).embedding.dimensions for n in OPENAI_EMBEDDINGS} == {
        "text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
    assert all(reg.match(n).embedding is None for n in OPENAI_CHAT + OPENAI_COMPLETIONS + ANTHROPIC)


def test_anthropic_names_are_listed_by_the_models_api():
    # Exact names in the Claude profiles are what GET /anthropic/v1/models lists.
    assert set(ANTHROPIC) <= set(listed_ids(default_registry()))


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="instant") as url:
        yield url


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
def test_every_sdk_name_is_served(server):
    """A tiny request per name on its API: HTTP 200 for all of them."""
    oa = openai.OpenAI(base_url=server + "/v1", api_key="sk", max_retries=0)
    claude = anthropic.Anthropic(base_url=server, api_key="sk", max_retries=0)
    for name in OPENAI_CHAT:
        r = oa.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        assert r.model == name and r.usage.completion_tokens >= 1
    for name in OPENAI_COMPLETIONS:
        assert oa.completions.create(model=name, prompt="hi", max_tokens=1).model == name
    for name in OPENAI_EMBEDDINGS:
        assert oa.embeddings.create(model=name, input="hi").model == name
    for name in ANTHROPIC:
        m = claude.messages.create(model=name, max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        assert m.model == name
        assert claude.models.retrieve(name).id == name
    listed = {m["id"] for m in requests.get(server + "/v1/models", timeout=10).json()["data"]}
    assert {n for n in OPENAI_EMBEDDINGS + OPENAI_COMPLETIONS} <= listed


# Open-weight models as vLLM/SGLang serve them, under their Hugging Face names.
OPEN_WEIGHT = {
    "meta-llama/Llama-3.1-8B-Instruct": ("llama-3-small", "cl100k_base"),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama-3-small", "cl100k_base"),
    "meta-llama/Llama-3.2-3B-Instruct": ("llama-3-small", "cl100k_base"),
    "meta-llama/Meta-Llama-3.1-8B-Instruct": ("llama-3-small", "cl100k_base"),
    "meta-llama/Llama-3.1-70B-Instruct": ("llama-3-70b", "cl100k_base"),
    "meta-llama/Llama-3.3-70B-Instruct": ("llama-3-70b", "cl100k_base"),
    "meta-llama/Llama-3.1-405B-Instruct-FP8": ("llama-3-405b", "cl100k_base"),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen-small", "cl100k_base"),
    "Qwen/Qwen2.5-72B-Instruct": ("qwen-large", "cl100k_base"),
    "Qwen/Qwen2.5-Coder-7B-Instruct": ("qwen-small", "cl100k_base"),
    "Qwen/Qwen2.5-Coder-32B-Instruct": ("qwen-large", "cl100k_base"),
    "Qwen/Qwen3-8B": ("qwen-small", "cl100k_base"),
    "Qwen/Qwen3-30B-A3B": ("qwen-small", "cl100k_base"),
    "Qwen/Qwen3-32B": ("qwen-large", "cl100k_base"),
    "Qwen/Qwen3-235B-A22B": ("qwen-large", "cl100k_base"),
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral-small", "cl100k_base"),
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": ("mistral-small", "cl100k_base"),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mistral-small", "cl100k_base"),
    "mistralai/Mixtral-8x22B-Instruct-v0.1": ("mistral-large", "cl100k_base"),
    "mistralai/Mistral-Large-Instruct-2411": ("mistral-large", "cl100k_base"),
    "openai/gpt-oss-20b": ("gpt-oss-20b", "o200k_base"),
    "openai/gpt-oss-120b": ("gpt-oss-120b", "o200k_base"),
    "deepseek-ai/DeepSeek-V3": ("deepseek-v3-hf", "o200k_base"),
    "deepseek-ai/DeepSeek-V3-0324": ("deepseek-v3-hf", "o200k_base"),
    "deepseek-ai/DeepSeek-R1": ("deepseek-r1-hf", "o200k_base"),
    "deepseek-ai/DeepSeek-R1-0528": ("deepseek-r1-hf", "o200k_base"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": ("deepseek-r1-distill", "cl100k_base"),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": ("deepseek-r1-distill", "cl100k_base"),
}


@pytest.mark.parametrize("name", sorted(OPEN_WEIGHT))
def test_open_weight_models_resolve_by_their_hugging_face_names(name):
    p = default_registry().match(name)
    assert p is not None and (p.name, p.encoding) == OPEN_WEIGHT[name]
    assert p.context_window >= 32768 and p.max_output_tokens == p.context_window


def test_open_weight_names_work_on_chat_and_completions(server):
    oa = openai.OpenAI(base_url=server + "/v1", api_key="sk", max_retries=0)
    r = oa.chat.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", max_tokens=2,
                                   messages=[{"role": "user", "content": "hi"}])
    assert r.model == "meta-llama/Llama-3.1-8B-Instruct" and r.usage.completion_tokens == 2
    c = oa.completions.create(model="Qwen/Qwen3-8B", prompt="hi", max_tokens=3)
    assert c.usage.completion_tokens == 3
    assert oa.models.retrieve("openai/gpt-oss-20b").id == "openai/gpt-oss-20b"
