"""LLM judges: order randomisation, verdict mapping, both-orders averaging, unparseable handling, assertion
voting - over real HTTP to a scripted OpenAI-compatible stub through litellm; one slow test on a real vLLM."""
import re

import pytest

from envs.tau2_telecom.endpoint import LLMEndpoint
from rl.rm.judges import (
    AssertionJudge,
    LiteLLMChat,
    PairwiseJudge,
    parse_assertion_verdicts,
    parse_pairwise_verdict,
    render_messages,
)
from rl.rm.pairs.format import Pair
from tests.openai_stub import ScriptedOpenAI


def _pair(i: int, chosen: str = "GOOD", rejected: str = "BAD") -> Pair:
    return Pair(prompt=[{"role": "user", "content": f"ticket {i}: my phone has no service"}],
                chosen=[{"role": "assistant", "content": f"{chosen} answer {i}"}],
                rejected=[{"role": "assistant", "content": f"{rejected} answer {i}"}],
                subset="s", section="sec", group=f"g{i}")


def _client(server, temperature: float = 0.0) -> LiteLLMChat:
    # concurrency 1: the content-aware replies below read the request they answer from stub.requests[-1].
    return LiteLLMChat(LLMEndpoint(model="openai/stub-judge", base_url=server.base_url,
                                         temperature=temperature), concurrency=1)


class _Replies(list):
    """Makes ScriptedOpenAI answer each request with fn(request body) (it serves replies[0] when len is 1)."""

    def __init__(self, server, fn):
        super().__init__()
        self.server, self.fn = server, fn

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return {"content": self.fn(self.server.requests[-1])}


def _user_text(request: dict) -> str:
    return request["messages"][-1]["content"]


def _slot(request: dict, letter: str) -> str:
    pattern = rf"<continuation_{letter}>\n(.*?)\n</continuation_{letter}>"
    return re.search(pattern, _user_text(request), re.DOTALL).group(1)


# ------------------------------------------------------------------------------------------------ pairwise
def test_order_is_seeded_balanced_and_independent_of_batching():
    pairs = [_pair(i) for i in range(400)]
    a = [PairwiseJudge(None, seed=0).chosen_first(p) for p in pairs]
    assert a == [PairwiseJudge(None, seed=0).chosen_first(p) for p in pairs]  # deterministic for a seed
    assert a == [PairwiseJudge(None, seed=0).chosen_first(p) for p in reversed(pairs)][::-1]  # not positional
    assert 170 <= sum(a) <= 230  # ~50/50 (binomial sd 10)
    b = [PairwiseJudge(None, seed=1).chosen_first(p) for p in pairs]
    assert 150 <= sum(x != y for x, y in zip(a, b)) <= 250  # another seed is another, independent draw


def test_position_biased_judge_is_mapped_back_and_the_stub_sees_the_swaps():
    pairs = [_pair(i) for i in range(24)]
    with ScriptedOpenAI([{"content": "Both are fine, but I pick [[A]]"}]) as server:
        judge = PairwiseJudge(_client(server), seed=3)
        prefs = judge.prefer(pairs)
        assert len(server.requests) == len(pairs)
        for p, pref, req in zip(pairs, prefs, server.requests):
            first = judge.chosen_first(p)
            # What the endpoint saw: the chosen text in slot A exactly when the seeded order says so...
            assert ("GOOD" in _slot(req, "A")) == first and ("GOOD" in _slot(req, "B")) != first
            # ...and "A" was translated back into a preference for the chosen side accordingly.
            assert pref == (1.0 if first else 0.0)
        assert 0 < sum(judge.chosen_first(p) for p in pairs) < len(pairs)  # both orders occurred
        # Length-neutral and order-neutral instruction, strict verdict format.
        system = server.requests[0]["messages"][0]
        assert system["role"] == "system" and "length" in system["content"].lower()
        assert "[[A]]" in system["content"] and "[[B]]" in system["content"]


def test_content_judge_prefers_chosen_in_either_order_and_both_orders_asks_swapped():
    def pick_good(req):
        return "Reasoning... [[A]]" if "GOOD" in _slot(req, "A") else "Reasoning... [[B]]"

    pairs = [_pair(i) for i in range(10)]
    with ScriptedOpenAI([{"content": ""}]) as server:
        server.replies = _Replies(server, pick_good)
        judge = PairwiseJudge(_client(server), seed=0, both_orders=True)
        assert judge.prefer(pairs) == [1.0] * len(pairs)
        assert len(server.requests) == 2 * len(pairs)
        for p, (r1, r2) in zip(pairs, zip(server.requests[::2], server.requests[1::2])):
            # The two asks of a pair show the same two texts in swapped slots, the seeded order first.
            assert _slot(r1, "A") == _slot(r2, "B") and _slot(r1, "B") == _slot(r2, "A")
            assert ("GOOD" in _slot(r1, "A")) == judge.chosen_first(p)


def test_both_orders_averages_split_and_unparseable_verdicts():
    pair = _pair(0)
    # A judge that always says A: one vote each way -> 0.5.
    with ScriptedOpenAI([{"content": "[[A]]"}]) as server:
        assert PairwiseJudge(_client(server), both_orders=True).prefer([pair]) == [0.5]
    # First ask answered for the chosen side, second ask unparseable: (1 + 0.5) / 2.
    judge = PairwiseJudge(None, both_orders=True)
    first_letter = "A" if judge.chosen_first(pair) else "B"
    with ScriptedOpenAI([{"content": f"[[{first_letter}]]"}, {"content": "I cannot decide."}]) as server:
        judge.client = _client(server)
        assert judge.prefer([pair]) == [0.75]
        assert judge.stats == {"judgments": 2, "unparseable": 1, "chose_a": first_letter == "A", "position_only": 0}


@pytest.mark.parametrize("reply", ["The first one is better.", "[[C]]", "[A]", "", "[[tie]]"])
def test_unparseable_verdict_scores_half(reply):
    with ScriptedOpenAI([{"content": reply}]) as server:
        judge = PairwiseJudge(_client(server))
        assert judge.prefer([_pair(0), _pair(1)]) == [0.5, 0.5]
        assert judge.stats["unparseable"] == 2


def test_parse_pairwise_verdict_takes_the_last_verdict():
    assert parse_pairwise_verdict('I must answer "[[A]]" or "[[B]]". B fixes it. [[B]]') == "B"
    assert parse_pairwise_verdict("[[ A ]]") == "A"
    assert parse_pairwise_verdict("A is better") is None


def test_render_messages_spells_out_tool_calls_and_results():
    text = render_messages([
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "toggle_roaming", "arguments": '{"on": true}'}}]},
        {"role": "tool", "name": "toggle_roaming", "content": "Roaming is ON"},
    ])
    assert '<tool_call> toggle_roaming({"on": true})' in text and "[tool toggle_roaming] Roaming is ON" in text


class _LogprobClient:
    """Reports next-token logprobs as a local engine would: `fn(prompt conversation) -> {option: logprob}`."""

    name = "logprob-stub"

    def __init__(self, fn):
        self.fn, self.asked = fn, []

    def next_token_logprobs(self, conversations, prefix, options):
        self.asked.append((prefix, tuple(options)))
        return [self.fn(c) for c in conversations]

    def complete(self, conversations, n=1):
        raise AssertionError("a logprob verdict must not ask for text")


def test_logprob_verdict_takes_the_likelier_letter_and_maps_it_back():
    """verdict="logprob": the reply is started as `[[` and the likelier of A/B as the next token is the verdict,
    mapped back through the seeded order; an option missing from the engine's top tokens is the less likely one,
    neither present (or an exact tie) is 0.5 and counted as unparseable."""
    pairs = [_pair(i) for i in range(20)]

    def knows_good(conv):  # the letter whose slot holds the chosen side gets more probability
        good = "A" if "GOOD" in conv[-1]["content"].split("<continuation_B>")[0] else "B"
        return {good: -0.2, "AB".replace(good, ""): -1.9}

    client = _LogprobClient(knows_good)
    judge = PairwiseJudge(client, seed=0, both_orders=True, verdict="logprob")
    assert judge.prefer(pairs) == [1.0] * 20
    assert judge.stats == {"judgments": 40, "unparseable": 0, "chose_a": 20, "position_only": 0}
    assert set(client.asked) == {("[[", ("A", "B"))}
    only_a = PairwiseJudge(_LogprobClient(lambda c: {"A": -3.0}), seed=0, verdict="logprob")
    assert sorted(set(only_a.prefer(pairs))) == [0.0, 1.0]  # A wins wherever it is shown: position, mapped back
    # in both orders a judge that only reads the position scores exactly 0.5 on every pair, and the stats say why
    only_a.both_orders = True
    assert only_a.prefer(pairs) == [0.5] * 20
    assert only_a.stats["position_only"] == 20 and only_a.stats["chose_a"] == 60
    for blank in ({}, {"A": -1.0, "B": -1.0}):
        judge = PairwiseJudge(_LogprobClient(lambda c, blank=blank: blank), verdict="logprob")
        assert judge.prefer(pairs[:4]) == [0.5] * 4 and judge.stats["unparseable"] == 4


def test_logprob_verdict_needs_a_client_that_reports_logprobs():
    with pytest.raises(ValueError, match="next-token logprobs"):
        PairwiseJudge(LiteLLMChat(LLMEndpoint(model="openai/x")), verdict="logprob")
    with pytest.raises(ValueError, match="verdict must be one of"):
        PairwiseJudge(None, verdict="probability")


# ----------------------------------------------------------------------------------------------- assertions
CONV = [{"role": "user", "content": "My data is slow."},
        {"role": "assistant", "content": "I re-enabled your data and refuelled 2 GB."}]


def _shown(request: dict) -> list[str]:
    return re.findall(r"^(\d+)\. (.*)$", _user_text(request).split("Assertions:\n", 1)[1], re.MULTILINE)


def test_assertions_are_shuffled_by_seed_and_verdicts_map_back_to_the_original_order():
    assertions = [f"assertion {k} is {'TRUE' if k % 3 else 'FALSE'}" for k in range(7)]

    def grade(req):  # a correct judge: MET for exactly the assertions marked TRUE, in the order shown
        return "Let me check.\n" + "\n".join(f"{n}: {'MET' if 'TRUE' in a else 'NOT_MET'}" for n, a in _shown(req))

    with ScriptedOpenAI([{"content": ""}]) as server:
        server.replies = _Replies(server, grade)
        judge = AssertionJudge(_client(server), seed=0)
        assert judge.judge(CONV, assertions) == ["TRUE" in a for a in assertions]
        shown = [a for _, a in _shown(server.requests[0])]
        assert sorted(shown) == sorted(assertions) and shown != assertions  # a permutation, not the identity
        assert judge.order(CONV, assertions) == AssertionJudge(None, seed=0).order(CONV, assertions)
        orders = {tuple(AssertionJudge(None, seed=s).order(CONV, assertions)) for s in range(6)}
        assert len(orders) > 1  # the seed changes the order
        system = server.requests[0]["messages"][0]["content"]
        assert "length" in system.lower() and "NOT_MET" in system


def test_majority_vote_over_samples_ties_and_unparseable_are_not_met():
    assertions = ["a0", "a1", "a2"]
    judge = AssertionJudge(None, votes=3, seed=5)
    order = judge.order(CONV, assertions)  # order[k] = original index shown as number k+1
    samples = ["1: MET\n2: MET\n3: NOT_MET",
               "1: MET\n2: NOT_MET\n3: I am not sure",
               "1: NOT_MET\n2: NOT_MET\n3: MET"]
    with ScriptedOpenAI([{"content": s} for s in samples]) as server:
        judge.client = _client(server, temperature=1.0)
        met = judge.judge(CONV, assertions)
        # The stub gives one choice per call, so the client asked for n=3, then topped up with n=2 and n=1.
        assert [r.get("n") for r in server.requests] == [3, 2, 1]
    expected = [False] * 3
    expected[order[0]] = True  # shown #1: 2 of 3 MET; #2: 1 of 3; #3: 1 MET, 1 NOT_MET, 1 unparseable
    assert met == expected
    assert judge.stats == {"judgments": 9, "unparseable": 1}
    # An even split is not a majority.
    judge2 = AssertionJudge(None, votes=2)
    with ScriptedOpenAI([{"content": "1: MET"}, {"content": "1: NOT_MET"}]) as server:
        judge2.client = _client(server, temperature=1.0)
        assert judge2.judge(CONV, ["only"]) == [False]
    # Greedy (temperature 0): one request, its answer counted for every vote (vLLM refuses n > 1 greedy).
    with ScriptedOpenAI([{"content": "1: MET"}, {"content": "1: NOT_MET"}]) as server:
        judge2.client = _client(server)
        assert judge2.judge(CONV, ["only"]) == [True]
        assert len(server.requests) == 1 and server.requests[0].get("n", 1) == 1


def test_parse_assertion_verdicts_formats():
    text = "Reasoning: 1. is fine.\n**1**: MET\n2) not met\n- 3: NOT MET\n2: MET\n9: MET"
    assert parse_assertion_verdicts(text, 4) == [True, True, False, None]  # last line per number wins
    assert AssertionJudge(None).judge(CONV, []) == []  # nothing to ask: no call


def test_unreachable_endpoint_raises_instead_of_scoring():
    import openai  # litellm's exceptions derive from openai's

    client = LiteLLMChat(LLMEndpoint(model="openai/nobody", base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(openai.OpenAIError):
        PairwiseJudge(client).prefer([_pair(0)])


# ------------------------------------------------------------------------------------------------ real vLLM
@pytest.mark.slow
def test_vllm_chat_judges_for_real_with_the_tiny_model():
    import ray

    from rl.models import resolve_model
    from rl.rm.judges import VLLMChat
    from tests.conftest import REPO_ROOT, cleanup_vllm_shm

    model = resolve_model("tiny")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    try:
        client = VLLMChat(str(model), num_cpus=1, max_model_len=2048, max_tokens=16, kv_cache_gib=0.125)
        try:
            assert client.info["max_model_len"] == 2048
            pairs = [_pair(i) for i in range(3)]
            judge = PairwiseJudge(client, seed=0, both_orders=True)
            prefs = judge.prefer(pairs)
            # A random model's text has no verdict -> 0.5 in each order; the call path is what is under test.
            assert len(prefs) == 3 and all(v in {0.0, 0.25, 0.5, 0.75, 1.0} for v in prefs)
            assert judge.stats["judgments"] == 6
            outs = client.complete([judge.prompt(pairs[0], True)], n=2)
            assert len(outs) == 1 and len(outs[0]) == 2 and all(isinstance(t, str) and t for t in outs[0])
            # An over-long prompt is not judged (no room to answer): empty text -> unparseable, no crash.
            huge = [{"role": "user", "content": "slow data " * 3000}]
            assert client.complete([huge], n=1) == [[""]]
            assert len(AssertionJudge(client).judge(CONV, ["x", "y"])) == 2
            _engine_logprobs_match_transformers(client, model, judge.prompt(pairs[0], True))
        finally:
            client.close()
    finally:
        ray.shutdown()
        cleanup_vllm_shm()


def _engine_logprobs_match_transformers(client, model, conv):
    """next_token_logprobs reads the right position and tokens: for the two likeliest next tokens after the
    prompt and `[[` (by transformers' float32 forward pass of the same model), the engine reports the same
    log-probabilities."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) + "[["
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)(torch.tensor([ids])).logits[0, -1]
    logp = logp.log_softmax(-1)
    options = {}
    for t in logp.topk(10).indices.tolist():  # the likeliest tokens that read back as themselves
        word = tok.decode([t])
        if word.strip() and tok(word, add_special_tokens=False)["input_ids"] == [t] and len(options) < 2:
            options[word] = logp[t].item()
    assert len(options) == 2
    got = client.next_token_logprobs([conv], "[[", list(options))[0]
    assert set(got) == set(options)
    assert all(abs(got[w] - options[w]) < 1e-3 for w in options), (got, options)
    with pytest.raises(Exception, match="one token per option"):
        client.next_token_logprobs([conv], "[[", ["no service at all"])
