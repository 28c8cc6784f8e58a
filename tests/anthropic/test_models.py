"""Anthropic's Models API and Claude model-name resolution (dashed, dated, -latest and dotted names)."""

import warnings

import anthropic
import openai
import pytest
import requests

from llmsim.anthropic.models import created_at, display_name
from llmsim.profiles import ProfileRegistry
from llmsim.testing import run_server

REGISTRY = ProfileRegistry.load()


@pytest.fixture(scope="module")
def server():
    with run_server(latency_profile="fast", seed=3) as url:
        yield url


@pytest.fixture(autouse=True)
def _no_sdk_deprecation_noise():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.mark.parametrize("model, profile", [
    ("claude-sonnet-4-5", "claude-sonnet"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet"),
    ("claude-sonnet-4-0", "claude-sonnet"),
    ("claude-sonnet-4-20250514", "claude-sonnet"),
    ("claude-3-7-sonnet-latest", "claude-sonnet"),
    ("claude-3-5-sonnet-latest", "claude-sonnet"),
    ("claude-3-5-sonnet-20241022", "claude-sonnet"),
    ("claude-3-sonnet-20240229", "claude-sonnet"),
    ("claude-opus-4-1", "claude-opus"),
    ("claude-opus-4-1-20250805", "claude-opus"),
    ("claude-opus-4-5", "claude-opus"),
    ("claude-opus-4-0", "claude-opus"),
    ("claude-3-opus-latest", "claude-opus"),
    ("claude-haiku-4-5", "claude-haiku"),
    ("claude-haiku-4-5-20251001", "claude-haiku"),
    ("claude-3-5-haiku-latest", "claude-haiku"),
    ("claude-3-haiku-20240307", "claude-haiku"),
    # dotted spellings (what OpenAI-compatible gateways send)
    ("claude-sonnet-4.5", "claude-sonnet"),
    ("claude-opus-4.1", "claude-opus"),
    ("claude-haiku-4.5", "claude-haiku"),
    ("claude-3.5-sonnet", "claude-sonnet"),
])
def test_claude_names_resolve_to_claude_profiles(model, profile):
    p = REGISTRY.match(model)
    assert p is not None and p.name == profile and p.encoding == "cl100k_base"


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5",
                                   "claude-sonnet-4-5-20250929", "claude-3-5-haiku-latest"])
def test_dashed_names_work_on_the_messages_endpoint(server, model):
    client = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0)
    m = client.messages.create(model=model, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert m.model == model and m.usage.output_tokens == 2


@pytest.mark.parametrize("model", ["claude-sonnet-4.5", "claude-opus-4.1", "claude-haiku-4-5"])
def test_claude_names_keep_working_on_the_openai_endpoint(server, model):
    client = openai.OpenAI(base_url=server + "/v1", api_key="k", max_retries=0)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert r.model == model and r.usage.completion_tokens == 2


def test_display_names_and_dates_derive_from_the_id():
    assert display_name("claude-sonnet-4-5-20250929") == "Claude Sonnet 4.5"
    assert display_name("claude-3-5-haiku-latest") == "Claude 3.5 Haiku"
    assert display_name("claude-opus-4-0") == "Claude Opus 4"
    assert created_at("claude-opus-4-1-20250805") == "2025-08-05T00:00:00Z"
    assert created_at("claude-opus-4-1", ["claude-opus-4-1-20250805", "claude-opus-4-20250514"]) == \
        "2025-08-05T00:00:00Z"
    assert created_at("claude-made-up") == "1970-01-01T00:00:00Z"


def test_list_shape(server):
    r = requests.get(server + "/anthropic/v1/models", params={"limit": 3}, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"}
    assert len(body["data"]) == 3 and body["has_more"] is True
    assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
    for m in body["data"]:
        assert m["type"] == "model" and m["id"].startswith("claude-") and "." not in m["id"]
        assert m["display_name"].startswith("Claude ") and m["created_at"].endswith("Z")
    dates = [m["created_at"] for m in body["data"]]
    assert dates == sorted(dates, reverse=True)  # newest first


def test_sdk_lists_every_claude_id_across_pages(server):
    client = anthropic.Anthropic(base_url=server + "/anthropic", api_key="k", max_retries=0)
    one_page = [m.id for m in client.models.list(limit=1000)]
    paged = [m.id for m in client.models.list(limit=4)]  # auto-pagination follows after_id=last_id
    assert paged == one_page and len(set(one_page)) == len(one_page)
    expected = {m for m in REGISTRY.model_names() if "." not in m and REGISTRY.match(m).provider == "anthropic"}
    assert set(one_page) == expected
    assert {"claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "claude-sonnet-4-5-20250929"} <= expected
    info = client.models.retrieve("claude-sonnet-4-5")
    assert info.id == "claude-sonnet-4-5" and info.display_name == "Claude Sonnet 4.5" and info.type == "model"
    assert info.max_tokens == 64000 and info.max_input_tokens == 200000


def test_before_id_pages_backwards(server):
    ids = requests.get(server + "/anthropic/v1/models?limit=1000", timeout=10).json()["data"]
    ids = [m["id"] for m in ids]
    page = requests.get(server + "/anthropic/v1/models", params={"limit": 2, "before_id": ids[5]},
                        timeout=10).json()
    assert [m["id"] for m in page["data"]] == ids[3:5] and page["has_more"] is True


def test_root_models_path_answers_anthropic_clients_in_their_shape(server):
    client = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0)  # GET /v1/models + anthropic-version
    assert client.models.retrieve("claude-haiku-4-5").display_name == "Claude Haiku 4.5"
    assert all(m.id.startswith("claude-") for m in client.models.list())
    # without the header /v1/models stays OpenAI's
    plain = requests.get(server + "/v1/models", timeout=10).json()
    assert plain["object"] == "list" and plain["data"][0]["object"] == "model"


def test_model_errors_in_anthropic_envelope(server):
    for url in (server + "/anthropic/v1/models/gpt-4o", server + "/anthropic/v1/models/claude-nope"):
        r = requests.get(url, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = requests.get(server + "/v1/models/claude-nope", headers={"anthropic-version": "2023-06-01"}, timeout=10)
    assert r.status_code == 404 and r.json()["type"] == "error"
    r = requests.get(server + "/anthropic/v1/models", params={"limit": 0}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("limit:")


def test_any_model_on_any_endpoint_keeps_its_own_encoding(server):
    from llmsim.tokens import count_tokens

    m = anthropic.Anthropic(base_url=server, api_key="k", max_retries=0).messages.create(
        model="gpt-4o", max_tokens=1024, messages=[{"role": "user", "content": "Hi"}])
    assert m.usage.output_tokens == count_tokens(m.content[0].text, "gpt-4o")  # o200k_base
    r = openai.OpenAI(base_url=server + "/v1", api_key="k", max_retries=0).responses.create(
        model="claude-sonnet-4-5", input="Hi")
    assert r.usage.output_tokens == count_tokens(r.output_text, "claude-sonnet-4-5")  # cl100k_base
