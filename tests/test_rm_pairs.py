"""Preference pairs for the reward model: tau2 perturbations labelled by tau2's verifier, rollouts, TeleQnA,
and the JSONL format."""
import json
from collections import Counter

import pytest

from rl.rm.pairs import cli
from rl.rm.pairs.format import Pair, PairFileError, read_pairs, split_by_task, write_pairs
from rl.rm.pairs.perturbations import ALL_KINDS, oracle_perturbation_pairs
from rl.rm.pairs.report import Report
from rl.rm.pairs.rollouts import rollout_pairs
from rl.rm.pairs.teleqna import teleqna_pairs
from tests.conftest import SHARED

TELEQNA_SAMPLE = SHARED / "datasets" / "teleqna" / "sample.json"


# ------------------------------------------------------------------------------- tau2 oracle perturbations
@pytest.fixture(scope="module", params=["solo", "dual"])
def small_pairs(request):
    from envs.tau2_telecom.tasks import load_split

    tasks = load_split("small")
    report = Report()
    pairs = oracle_perturbation_pairs(tasks, mode=request.param, report=report)
    return request.param, {t.id: t for t in tasks}, pairs, report


def replay(session, task, mode, prompt, side):
    """Play a side's assistant turns through a fresh session; the conversation must come out identical."""
    obs = session.reset(task, mode)
    assert obs.messages == prompt
    convo = list(obs.messages)
    for m in side:
        if m["role"] == "assistant":
            assert not session.done, "the recorded side goes on after the episode ended"
            convo += [m] + session.step(m["content"]).messages
    assert convo == prompt + side
    assert session.done
    return session.evaluate()


def agent_turns(side):
    return [m["content"] for m in side if m["role"] == "assistant"]


def test_every_pair_is_labelled_by_tau2(small_pairs, world):
    from envs.tau2_telecom.session import TelecomSession
    from envs.tau2_telecom.users import ScriptedUser

    mode, tasks, pairs, _ = small_pairs
    session = TelecomSession(world, user=ScriptedUser(), prompt="compact")
    assert len(pairs) >= 60
    for p in pairs:
        task = tasks[p.task_id]
        assert replay(session, task, mode, p.prompt, p.chosen).success
        res = replay(session, task, mode, p.prompt, p.rejected)
        assert res.reward < 1 and not res.success, (p.subset, p.task_id)
        assert res.termination in ("agent_stop", "user_stop")  # failed on the merits, not cut off


def test_kinds_groups_and_shapes(small_pairs):
    _, tasks, pairs, report = small_pairs
    assert set(report.pairs) == set(ALL_KINDS) and Counter(p.subset for p in pairs) == report.pairs
    by_group = {}
    for p in pairs:
        assert (p.section, p.source, p.group) == ("tau2-telecom", "oracle_perturbation", p.task_id)
        first = by_group.setdefault(p.group, p)
        assert (p.prompt, p.chosen) == (first.prompt, first.chosen)  # best-of-n needs one prompt + chosen
        # the prompt is everything before the agent's first own turn
        assert p.prompt[0]["role"] == "system" and p.prompt[-1]["role"] == "user"
        assert p.chosen[0]["role"] == p.rejected[0]["role"] == "assistant"
        gold, bad = agent_turns(p.chosen), agent_turns(p.rejected)
        n_actions = len(tasks[p.task_id].evaluation_criteria.actions)
        ending = gold[n_actions:]
        if p.subset == "missing_action":
            assert len(bad) == len(gold) - 1 and all(t in gold for t in bad)
        elif p.subset == "wrong_argument":
            diff = [(a, b) for a, b in zip(gold, bad) if a != b]
            assert len(bad) == len(gold) and len(diff) == 1
        elif p.subset == "premature_transfer":
            assert "transfer_to_human_agents" in bad[-2] and not any("transfer_to" in t for t in gold)
            assert len(bad) - 2 < n_actions and bad[:-2] == gold[:len(bad) - 2]
        elif p.subset == "no_resolution":
            assert bad == ending
        elif p.subset == "wrong_order":
            assert sorted(bad) == sorted(gold) and bad != gold
        elif p.subset == "extra_harmful_action":
            assert len(bad) == len(gold) + 1 and bad[:n_actions] == gold[:n_actions]
    assert len(by_group) == len(tasks)  # every small task's oracle succeeds, so every task has a group


def test_generation_is_seeded():
    from envs.tau2_telecom.tasks import load_split

    tasks = load_split("small")[:6]
    kinds = "wrong_argument,missing_action,extra_harmful_action"
    a = oracle_perturbation_pairs(tasks, kinds=kinds, seed=3)
    assert a == oracle_perturbation_pairs(tasks, kinds=kinds, seed=3)
    assert {p.subset for p in a} <= set(kinds.split(","))
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        oracle_perturbation_pairs(tasks, kinds="missing_actoin")


def test_cli_tau2_and_split_by_task(tmp_path, capsys):
    from envs.tau2_telecom.tasks import split_ids

    out = tmp_path / "p.jsonl"
    assert cli.main(["tau2", "--split", "small", "--limit", "3", "--kinds", "no_resolution",
                          "--out", str(out)]) == 0
    pairs = read_pairs(out)
    assert len(pairs) == 3 and "no_resolution: 3" in capsys.readouterr().out
    test_ids = split_ids("test")
    fake = [Pair([], [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}], "s", "x",
                 "g", task_id=i) for i in (test_ids[0], "not-a-test-task", None)]
    train, held = split_by_task(fake, test_ids)
    assert [p.task_id for p in train] == ["not-a-test-task", None] and [p.task_id for p in held] == [test_ids[0]]


def test_cli_tau2_pairs_of_a_configs_training_tasks_leave_its_held_out_tasks_out(tmp_path):
    from rl.config import load_config
    from rl.runtime import split_tasks
    from tests.conftest import REPO_ROOT

    config = tmp_path / "c.yaml"
    config.write_text(f"base: {REPO_ROOT}/configs/test_tiny.yaml\ntrain:\n  eval_split: test\n  eval_tasks: 2\n")
    out = tmp_path / "p.jsonl"
    assert cli.main(["tau2", "--training-tasks-of", str(config), "--kinds", "no_resolution", "--out", str(out)]) == 0
    split = split_tasks(load_config(str(config)))
    assert {p.task_id for p in read_pairs(out)} == set(split.train) and len(split.heldout) == 2
    assert cli.main(["tau2", "--training-tasks-of", str(tmp_path / "none.yaml"), "--out", str(out)]) == 2


# ----------------------------------------------------------------------------------------- JSONL format
def _pair(**kw):
    d = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
         "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}],
         "subset": "sub", "section": "sec", "group": "g1", "task_id": "t1", "source": "rollout"}
    return Pair(**{**d, **kw})


def test_round_trip_and_string_forms(tmp_path):
    path = tmp_path / "deep" / "pairs.jsonl"
    pairs = [_pair(), _pair(margin=0.5, task_id=None, rejected=[{"role": "assistant", "content": "worse"}])]
    write_pairs(path, pairs)
    assert read_pairs(path) == pairs
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]  # no temp file left behind
    assert "margin" not in path.read_text().splitlines()[0]  # optional key, absent when unset
    # OpenRLHF's plain form: strings, no metadata
    path.write_text(json.dumps({"prompt": "What is 5G?", "chosen": "A standard.", "rejected": "A fruit."}) + "\n\n")
    (p,) = read_pairs(path)
    assert p.prompt == [{"role": "user", "content": "What is 5G?"}]
    assert p.chosen == [{"role": "assistant", "content": "A standard."}]
    assert (p.subset, p.section) == ("default", "default") and p.group.startswith("h:")
    # pairs with the same prompt + chosen get the same default group
    path.write_text("\n".join(json.dumps({"prompt": "q", "chosen": "a", "rejected": r}) for r in "xyz"))
    assert len({p.group for p in read_pairs(path)}) == 1


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "q", "chosen": "a"', r":2:\d+: invalid JSON"),
    ('[1, 2]', ":2: expected a JSON object"),
    ('{"prompt": "q", "chosen": "a"}', ":2: missing field 'rejected'"),
    ('{"prompt": "q", "chosen": "a", "rejected": 3}', ":2: field 'rejected': expected a list"),
    ('{"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}', r"field 'prompt'\[0\]\.role"),
    ('{"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}', r"field 'chosen'\[0\]\.content"),
    ('{"prompt": "q", "chosen": [], "rejected": "b"}', "field 'chosen': empty"),
    ('{"prompt": "q", "chosen": "a", "rejected": "a"}', "identical"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "subset": 4}', "field 'subset'"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}', "field 'margin'"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}', "field 'margin': expected a finite number"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "task_id": 7}', "field 'task_id'"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + line + "\n")
    with pytest.raises(PairFileError, match=f"bad.jsonl{message}" if message.startswith(":") else message) as e:
        read_pairs(path)
    assert f"{path}:2" in str(e.value)


def test_missing_file_and_invalid_pair_on_write(tmp_path):
    with pytest.raises(PairFileError, match="not found"):
        read_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="pair #1 .*identical"):
        write_pairs(tmp_path / "x.jsonl", [_pair(), _pair(rejected=_pair().chosen)])
    assert not (tmp_path / "x.jsonl").exists()


# ------------------------------------------------------------------------------------------------ rollouts
def _messages(mode, *turns):
    head = [{"role": "system", "content": "sys"}]
    head += [{"role": "user", "content": "Ticket: t"}] if mode == "solo" else [
        {"role": "assistant", "content": "Hi! How can I help you today?"}, {"role": "user", "content": "help"}]
    body = []
    for t in turns:
        body += [{"role": "assistant", "content": t}, {"role": "tool", "tool_call_id": "x", "name": "n",
                                                       "content": "ok"}]
    return head + body


def test_rollout_pairs_from_run_trajectories(tmp_path):
    from envs.tau2_telecom.session import EvalResult
    from rl.config import load_config
    from rl.contracts import Score, Trajectory
    from rl.run_dir import RunDir

    # rows written by the real RunDir.log_trajectories
    run = RunDir(load_config(None, [f"run_dir={tmp_path}/run"]))
    trajs, scores = [], []

    def episode(task, success, *turns, mode="solo"):
        evaluation = EvalResult(task_id=task, reward=float(success), success=bool(success), termination="agent_stop",
                                reward_basis=[], env_assertions=[], actions=[], communicate=[], nl_assertions=None,
                                db_match=None, turns=len(turns), tool_errors=0, rejected_calls=0)
        trajs.append(Trajectory(task_id=task, group=0, messages=_messages(mode, *turns), eval=evaluation,
                                token_ids=[1, 2], loss_mask=[0, 1], turns=len(turns)))
        scores.append(Score(float(success), {"success": float(success), "tau2": float(success)}))

    episode("A", 1, "fix", "done")
    episode("A", 1, "fix", "check", "done")
    for i in range(5):
        episode("A", 0, f"wrong{i}", "done")
    episode("A", 0, "wrong0", "done")  # duplicate conversation
    episode("B", 1, "fix", "done", mode="dual")
    episode("B", 0, "nothing", mode="dual")
    episode("C", 0, "wrong")  # no success for C
    run.log_trajectories(1, trajs, scores)
    run.close()
    path = tmp_path / "run" / "trajectories.jsonl"
    with open(path, "a") as fh:
        fh.write('{"task_id": "A", "messages": []}\n{"torn": \n')

    report = Report()
    pairs = rollout_pairs(tmp_path / "run", max_pairs_per_task=5, report=report)
    by_task = Counter(p.task_id for p in pairs)
    assert by_task == {"A": 5, "B": 1}
    assert {p.group for p in pairs if p.task_id == "A"} == {"A#0", "A#1"}
    assert Counter(p.group for p in pairs)["A#0"] == 3  # a best-of-4 group
    for p in pairs:
        assert (p.subset, p.section, p.source) == ("rollout", "tau2-telecom", "rollout")
        assert p.chosen[0]["role"] == "assistant" and p.chosen[0]["content"] == "fix"
        assert p.rejected[0]["content"] in {"nothing"} | {f"wrong{i}" for i in range(5)}
        assert p.prompt[-1]["role"] == "user"  # dual: the greeting stays in the prompt
    assert len({p.rejected[0]["content"] for p in pairs if p.task_id == "A"}) == 5  # every failure used once
    assert report.skipped["rollout: duplicate conversation"] == 1
    assert report.skipped["rollout: task without both a success and a failure"] == 1
    assert report.skipped["rollout: malformed row"] == 2
    assert any(f"{path}:12" in d and "components" in d for d in report.details)
    assert any(f"{path}:13" in d and "invalid JSON" in d for d in report.details)
    # only some tasks (e.g. a split's ids)
    assert {p.task_id for p in rollout_pairs(path, task_ids=["B"])} == {"B"}


def test_rollout_pairs_need_a_shared_prompt():
    rows = [{"task_id": "A", "components": {"success": 1.0}, "messages": _messages("dual", "fix")},
            {"task_id": "A", "components": {"success": 0.0}, "messages": _messages("dual", "bad")}]
    rows[1]["messages"][2]["content"] = "a different opening"  # e.g. an LLM customer
    report = Report()
    assert rollout_pairs(rows, report=report) == []
    assert report.skipped["rollout: prompts differ"] == 1


# ------------------------------------------------------------------------------------------------- TeleQnA
def test_teleqna_shared_sample():
    if not TELEQNA_SAMPLE.exists():
        pytest.skip(f"{TELEQNA_SAMPLE} not available")
    data = json.loads(TELEQNA_SAMPLE.read_text())
    report = Report()
    pairs = teleqna_pairs(TELEQNA_SAMPLE, report=report)
    n_options = {q: sum(k.startswith("option ") for k in e) for q, e in data.items()}
    assert len(pairs) == sum(n - 1 for n in n_options.values()) and not report.skipped
    assert Counter(p.group for p in pairs) == {q: n - 1 for q, n in n_options.items()}
    assert {p.subset for p in pairs} == {e["category"] for e in data.values()}
    for p in pairs:
        e = data[p.group]
        assert (p.section, p.source, p.task_id) == ("teleqna", "teleqna", p.group)
        assert p.chosen == [{"role": "assistant", "content": e["answer"]}]
        assert p.rejected[0]["content"] != e["answer"] and p.rejected[0]["content"].startswith("option ")
        assert p.prompt[0]["content"].startswith(e["question"].strip()) and e["option 1"] in p.prompt[0]["content"]


def test_teleqna_malformed_entries(tmp_path):
    good = {"question": "What does UE stand for?", "option 1": "User Equipment", "option 2": "Uplink Element",
            "option 3": "Unified Edge", "answer": "option 1: User Equipment", "category": "Lexicon"}
    data = {
        "question 1": good,
        "question 2": {**good, "answer": None},
        "question 3": {**good, "answer": "option 2: User Equipment"},  # text does not match option 2
        "question 4": {**good, "answer": "option 7: Seven"},
        "question 5": {"question": "q", "option 1": "only", "answer": "option 1: only"},
        "question 6": "not an object",
        "question 7": {**good, "answer": "User Equipment"},
        "question 8": {**good, "option 2": "user  equipment"},  # a distractor equal to the answer is dropped
        "question 9": {**good, "category": None, "answer": "option 1:User Equipment "},
        "question 10": {**good, "question": ""},
    }
    path = tmp_path / "teleqna.json"
    path.write_text(json.dumps(data))
    report = Report()
    pairs = teleqna_pairs(path, report=report)
    assert Counter(p.group for p in pairs) == {"question 1": 2, "question 8": 1, "question 9": 2}
    assert {p.subset for p in pairs if p.group == "question 9"} == {"uncategorized"}
    assert report.skipped == {"teleqna: no answer": 1, "teleqna: answer text differs from its option": 1,
                              "teleqna: answer names a missing option": 1, "teleqna: fewer than 2 options": 1,
                              "teleqna: entry not an object": 1, "teleqna: answer not 'option k: <text>'": 1,
                              "teleqna: no question text": 1}
    assert any("'question 3'" in d for d in report.details)
    out = tmp_path / "out.jsonl"
    assert cli.main(["teleqna", str(path), "--out", str(out)]) == 0 and len(read_pairs(out)) == 5
    path.write_text('{"question 1": {\n  "question": }')
    with pytest.raises(ValueError, match=r"teleqna.json:2:\d+: invalid JSON"):
        teleqna_pairs(path)
    assert cli.main(["teleqna", str(path), "--out", str(out)]) == 2


def test_teleqna_split_by_question(tmp_path):
    entry = {"question": "What does UE stand for?", "option 1": "User Equipment", "option 2": "Uplink Element",
             "answer": "option 1: User Equipment", "category": "Lexicon"}
    data = {f"question {i}": entry for i in range(200)}
    path = tmp_path / "teleqna.json"
    path.write_text(json.dumps(data))
    every = teleqna_pairs(path)
    train, test = teleqna_pairs(path, part="train"), teleqna_pairs(path, part="test")
    assert not {p.group for p in train} & {p.group for p in test}
    assert sorted(p.group for p in train + test) == sorted(p.group for p in every)
    assert 40 <= len(test) <= 80  # a 0.3 share of 200 questions, by hash
    # the part depends on the question's id only, not on the file's order or content
    path.write_text(json.dumps(dict(reversed(list(data.items())))))
    assert {p.group for p in teleqna_pairs(path, part="test")} == {p.group for p in test}
    out = tmp_path / "test.jsonl"
    assert cli.main(["teleqna", str(path), "--part", "test", "--out", str(out)]) == 0
    assert len(read_pairs(out)) == len(test)
    with pytest.raises(ValueError, match="test_share"):
        teleqna_pairs(path, part="test", test_share=1.5)


def test_teleqna_limit_takes_the_first_usable_questions_of_the_part(tmp_path):
    good = {"question": "What does UE stand for?", "option 1": "User Equipment", "option 2": "Uplink Element",
            "option 3": "Unit Entity", "answer": "option 1: User Equipment", "category": "Lexicon"}
    data = {f"question {i}": good for i in range(60)}
    data["question 3"] = {"question": "broken", "option 1": "x"}  # skipped: it does not count towards the limit
    path = tmp_path / "teleqna.json"
    path.write_text(json.dumps(data))
    train = teleqna_pairs(path, part="train")
    first = list(dict.fromkeys(p.group for p in train if p.group != "question 3"))[:5]
    limited = teleqna_pairs(path, part="train", limit=5)
    assert list(dict.fromkeys(p.group for p in limited)) == first
    assert len(limited) == 5 * 2  # two distractors a question
    out = tmp_path / "train.jsonl"
    assert cli.main(["teleqna", str(path), "--part", "train", "--limit", "5", "--out", str(out)]) == 0
    assert [p.group for p in read_pairs(out)] == [p.group for p in limited]
    with pytest.raises(ValueError, match="limit"):
        teleqna_pairs(path, limit=0)
