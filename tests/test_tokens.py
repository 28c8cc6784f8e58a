import gevent
import tiktoken

import llmsim
from llmsim.tokens import count_chat_tokens, encode, encoding_name_for_model, get_encoding


def test_known_counts_offline():
    # o200k and cl100k tokenise this differently; both values are tiktoken's own
    text = "Tokenization isn't trivial: naïve café 東京 🙂"
    assert llmsim.count_tokens(text, "gpt-4o") == len(get_encoding("o200k_base").encode(text))
    assert llmsim.count_tokens(text, "gpt-4") == len(get_encoding("cl100k_base").encode(text))
    assert llmsim.count_tokens("hello world", "gpt-5") == 2


def test_encoding_matches_tiktoken_reference_hashes():
    # The seeded cache passed tiktoken's own sha256 check, so the ranks are the official ones.
    enc = get_encoding("o200k_base")
    assert isinstance(enc, tiktoken.Encoding) and enc.n_vocab == 200019
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_model_to_encoding():
    for m in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "gpt-5.1-codex", "o3", "o4-mini", "o3-mini"]:
        assert encoding_name_for_model(m) == "o200k_base", m
    for m in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo", "claude-sonnet-4-5"]:
        assert encoding_name_for_model(m) == "cl100k_base", m
    assert encoding_name_for_model("some-unknown-model") == "o200k_base"


def test_chat_accounting():
    enc = get_encoding("o200k_base")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    expected = 3 + (3 + len(enc.encode("system")) + len(enc.encode("be brief"))) + (
        3 + len(enc.encode("user")) + len(enc.encode("hi")))
    assert count_chat_tokens(msgs, enc) == expected


def test_large_text_is_counted_off_the_event_loop():
    enc = get_encoding("o200k_base")
    text = "lorem ipsum dolor sit amet " * 20000  # 540 KB
    ticks = []

    def ticker():
        for _ in range(1000):
            ticks.append(1)
            gevent.sleep(0.001)

    t = gevent.spawn(ticker)
    n = len(encode(text, enc))
    t.kill()
    assert n == len(enc.encode_ordinary(text))
    assert len(ticks) >= 2  # the loop kept running while the threadpool encoded


def test_short_texts_are_counted_once_and_the_memo_stays_bounded():
    from llmsim import tokens

    enc = tokens.get_encoding("o200k_base")
    system = "You are a helpful assistant that answers questions about the weather. " * 20
    assert tokens.count_text_bounded(system, enc) == (len(enc.encode_ordinary(system)), True)
    assert tokens._COUNTED[(enc.name, system)] == len(enc.encode_ordinary(system))
    assert tokens.count_text_bounded(system, enc)[0] == len(enc.encode_ordinary(system))  # from the memo
    assert tokens.count_text_bounded(system + " Extra words.", enc)[0] == len(enc.encode_ordinary(system)) + 3
    for i in range(tokens.RECENT_TEXTS + 5):
        tokens.count_text_bounded(f"text number {i}", enc)
    assert len(tokens._COUNTED) <= tokens.RECENT_TEXTS


def test_answers_a_generator_made_are_kept_only_for_their_own_set_up():
    """A generated answer's ids and token texts wait for the stream builder in a short table (MADE_TEXTS), and
    never enter the table of texts encoded lately: a long table of them cost every request cache misses."""
    from llmsim import tokens
    from llmsim.generator import GenerationRequest, LoremGenerator
    from llmsim.stream import Block, TokenStreamBuilder

    enc = tokens.get_encoding("o200k_base")
    generator, builder = LoremGenerator(100), TokenStreamBuilder(enc)
    for seed in (None, 7):  # a pool window, and a seeded draw
        texts = []
        for i in range(3 * tokens.MADE_TEXTS):
            text = generator.generate(GenerationRequest(prompt=f"x{i}", model="gpt-4o", seed=seed), tokens=40)
            plan = builder.build_blocks([Block("text", text)])
            assert plan.output_tokens == 40 and "".join(plan.pieces) == text
            texts.append(text)
        assert len(tokens._MADE) <= tokens.MADE_TEXTS
        assert not any((enc.name, t) in tokens._RECENT for t in texts)
        assert tokens.known_pieces(texts[-1], enc) is not None or seed is not None
        assert encode(texts[-1], enc) == enc.encode_ordinary(texts[-1])
