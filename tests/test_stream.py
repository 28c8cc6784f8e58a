import random

from llmsim import LatencyProfile
from llmsim.generator import (EchoGenerator, GenerationRequest, LoremGenerator, RandomGenerator, SequenceGenerator,
                              make_generator)
from llmsim.stream import Pacer, TokenStreamBuilder
from llmsim.tokens import count_tokens, get_encoding

O200K = get_encoding("o200k_base")


def test_one_chunk_per_token_and_utf8_never_broken():
    text = RandomGenerator(400).generate(GenerationRequest(prompt="x", seed=5)) + " 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 🪿"
    plan = TokenStreamBuilder(O200K).build(text)
    assert plan.text == text and plan.output_tokens == len(O200K.encode(text))
    assert all(p and "\ufffd" not in p for p in plan.pieces)
    # multi-byte characters split across tokens make some chunks carry 2+ tokens
    assert max(plan.piece_tokens) >= 2 and min(plan.piece_tokens) == 1


def test_chunk_tokens_groups_k():
    plan = TokenStreamBuilder(O200K, chunk_tokens=4).build(" ".join(["word"] * 21))
    assert plan.piece_tokens == [4, 4, 4, 4, 4, 1]


def test_max_tokens_and_stop():
    b = TokenStreamBuilder(O200K)
    p = b.build("one two three four five", max_tokens=2)
    assert p.output_tokens == 2 and p.finish_reason == "length" and p.text == "one two"
    p = b.build("one two three four five", stop=["four", "two"])
    assert p.text == "one " and p.finish_reason == "stop" and p.stop_sequence == "two"
    p = b.build("one two three four five", max_tokens=1, stop=["four"])
    assert p.finish_reason == "length" and p.text == "one"


class FakeClock:
    """Time moves only when the pacer sleeps, overshooting each sleep by 3 ms."""

    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s + 0.003


def test_pacer_uses_absolute_deadlines_so_overshoot_never_accumulates():
    clock = FakeClock()
    plan = TokenStreamBuilder(O200K).build(" x" * 101)
    pacer = Pacer(LatencyProfile.constant(100, 10), random.Random(), clock=clock, sleep=clock.sleep)
    times = []
    for _ in pacer.paced(plan, start=0.0):
        times.append(clock.t)
    n = plan.output_tokens
    # each chunk leaves within one overshoot of t0 + ttft + i*itl, never later
    for i, t in enumerate(times):
        assert abs(t - (0.100 + i * 0.010) - 0.003) < 1e-9
    assert abs(times[-1] - (0.1 + (n - 1) * 0.01 + 0.003)) < 1e-9


def test_pacer_k_token_chunk_waits_for_its_last_token():
    clock = FakeClock()
    plan = TokenStreamBuilder(O200K, chunk_tokens=3).build(" x" * 9)
    pacer = Pacer(LatencyProfile.constant(50, 10), random.Random(), clock=clock, sleep=clock.sleep)
    times = [clock.t for _ in pacer.paced(plan, start=0.0)]
    assert [round(t - 0.003, 6) for t in times] == [0.07, 0.1, 0.13]


def test_reasoning_tokens_delay_first_token():
    clock = FakeClock()
    plan = TokenStreamBuilder(O200K).build(" x" * 3)
    plan.reasoning_tokens = 40
    pacer = Pacer(LatencyProfile.constant(100, 10), random.Random(), clock=clock, sleep=clock.sleep)
    first = next(iter(pacer.paced(plan, start=0.0)))
    assert first and abs(clock.t - (0.1 + 0.4 + 0.003)) < 1e-9


def test_generators():
    req = GenerationRequest(prompt="hello there", model="gpt-4o", seed=1)
    lorem = LoremGenerator(100).generate(req)
    assert count_tokens(lorem, "gpt-4o") == 100 and lorem == LoremGenerator(100).generate(req)
    assert lorem != LoremGenerator(100).generate(GenerationRequest(prompt="other", model="gpt-4o", seed=1))
    assert EchoGenerator(100).generate(req) == "hello there"
    assert SequenceGenerator(5).generate(req).startswith("1 2 3")
    assert make_generator("fixed:abc").generate(req) == "abc"
    assert LoremGenerator(10).generate({"model": "gpt-4", "messages": [{"role": "user", "content": "q"}]})


def test_script_generator_cycles(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("- first reply\n- second reply\n")
    g = make_generator(f"script:{f}")
    assert [g.generate(GenerationRequest()) for _ in range(3)] == ["first reply", "second reply", "first reply"]


def test_a_plans_chunk_counts_are_bytes_until_a_chunk_holds_256_tokens():
    """The engine keeps a plan's per-chunk token counts as bytes (one a chunk, for as long as a stream lasts);
    a chunk of 256 tokens or more needs wider counts, and gets them."""
    from llmsim.cli.config import resolve_config
    from llmsim.cli.state import AppState
    from llmsim.engine import Request

    for chunk, code in ((1, "B"), (255, "B"), (300, "I")):
        state = AppState(resolve_config({"latency_profile": "instant", "chunk_tokens": chunk}, env={}))
        req = Request(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=700, ignore_eos=True)
        gen = state.generate(req)
        counts = gen.plan.piece_tokens
        assert counts.typecode == code and sum(counts) == 700 and max(counts) == min(chunk, 700)
        gen.release()


def test_an_answer_cut_inside_a_character_has_no_chunk_without_a_token():
    """max_tokens may end an answer on a token holding the first bytes of a character: its U+FFFD goes with
    that token's chunk. (It once made a chunk of 0 tokens, and the server's ITL statistics divided by it.)"""
    text = RandomGenerator(300).generate(GenerationRequest(prompt="x", seed=7))
    ids = O200K.encode(text)
    builder, cut_inside = TokenStreamBuilder(O200K), 0
    for cut in range(1, len(ids) + 1):
        plan = builder.build(text, max_tokens=cut)
        assert min(plan.piece_tokens) >= 1, cut
        assert plan.output_tokens == cut and len(plan.pieces) == len(plan.piece_tokens)
        assert plan.text == O200K.decode(ids[:cut])  # the held-back bytes as one U+FFFD, as tiktoken decodes
        cut_inside += plan.text.endswith("\ufffd") and not text[:len(plan.text)].endswith("\ufffd")
    assert cut_inside  # the case happened


def test_every_plan_accounts_for_each_token_once_whatever_the_cut():
    """Across generators, chunk sizes and max_tokens cuts: no chunk without a token, the chunks' counts sum
    to the tokens kept, and their texts join to what those tokens decode to."""
    rng = random.Random(11)
    for name in ("lorem", "random"):
        gen = make_generator(name, 200)
        for seed in (1, 2):
            text = gen.generate(GenerationRequest(prompt="x", seed=seed)) + " ꙮ🪿 done"
            ids = O200K.encode(text)
            for k in (1, 3):
                builder = TokenStreamBuilder(O200K, chunk_tokens=k)
                for cut in sorted(rng.sample(range(1, len(ids) + 1), 25)) + [len(ids)]:
                    plan = builder.build(text, max_tokens=cut)
                    counts = list(plan.piece_tokens)
                    assert min(counts) >= 1 and len(counts) == len(plan.pieces), (name, seed, k, cut)
                    assert sum(counts) == plan.output_tokens == cut
                    assert plan.text == O200K.decode(ids[:cut])
