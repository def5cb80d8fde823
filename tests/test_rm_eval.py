"""RewardBench-style evaluation: hand-computed reports on synthetic pairs (a dict-lookup scorer - the arithmetic
is what is under test), the judge path, the report files and the CLI (stub endpoint, a real tiny RM folder)."""
import json
import re

import pytest

from rl.rm.eval import (
    best_of_4_groups,
    evaluate_judge,
    evaluate_rm,
    judge_best_of_4_credit,
    main,
    markdown_table,
    pairwise_accuracy,
    scalar_best_of_4_credit,
    write_report,
)
from rl.rm.judges import PairwiseJudge
from rl.rm.pairs.format import Pair, write_pairs
from tests.openai_stub import ScriptedOpenAI


def _pair(ticket: str, chosen: str, rejected: str, subset: str, section: str, group: str | None = None) -> Pair:
    return Pair(prompt=[{"role": "user", "content": ticket}],
                chosen=[{"role": "assistant", "content": chosen}],
                rejected=[{"role": "assistant", "content": rejected}],
                subset=subset, section=section, group=group or f"{ticket}|{chosen}")


class DictScorer:
    """Score = SCORES[last message]; records every conversation it was asked to score."""

    path = "dict-scorer"

    def __init__(self, scores: dict[str, float]):
        self.scores, self.seen = scores, []

    def score(self, conversations):
        self.seen += [c[-1]["content"] for c in conversations]
        return [self.scores[c[-1]["content"]] for c in conversations]


def _side(score: float, tag: str) -> str:
    return f"{tag}={score}"  # the text carries its score: DictScorer and the scripted judge read it back


def _score_of(text: str) -> float:
    return float(text.split("=")[1])


def _scorer_for(pairs) -> DictScorer:
    return DictScorer({m["content"]: _score_of(m["content"]) for p in pairs for m in p.chosen + p.rejected})


# Section A: subset x = 3 pairs, 2 right (one tie, counted wrong); subset y = 1 pair, wrong. Section B: 2 of 2.
PAIRWISE = [
    _pair("t1", _side(2, "c"), _side(1, "r"), "x", "A"),
    _pair("t2", _side(3, "c"), _side(3, "r"), "x", "A"),  # tie -> wrong
    _pair("t3", _side(5, "c"), _side(4, "r"), "x", "A"),
    _pair("t4", _side(0, "c"), _side(1, "r"), "y", "A"),
    _pair("t5", _side(1, "c"), _side(0, "r"), "z", "B"),
    _pair("t6", _side(9, "c"), _side(-3, "r"), "z", "B"),
]


def test_pairwise_accuracy_ties_wrong_and_sections_weighted_by_count():
    report = evaluate_rm(PAIRWISE, _scorer_for(PAIRWISE))
    pw = report["pairwise"]
    a, b = pw["sections"]["A"], pw["sections"]["B"]
    assert a["subsets"]["x"] == {"n": 3, "accuracy": pytest.approx(2 / 3)}
    assert a["subsets"]["y"] == {"n": 1, "accuracy": 0.0}
    # Weighted by count: (3 * 2/3 + 1 * 0) / 4 = 0.5, not the unweighted subset mean 1/3.
    assert a["n"] == 4 and a["accuracy"] == pytest.approx(0.5)
    assert b == {"n": 2, "accuracy": 1.0, "subsets": {"z": {"n": 2, "accuracy": 1.0}}}
    assert pw["overall"] == {"n": 6, "accuracy": pytest.approx(0.75), "all_pairs": pytest.approx(4 / 6)}
    assert report["best_of_4"]["overall"]["n"] == 0  # no group has 3 rejected sides
    assert report["kind"] == "reward_model" and report["model"] == "dict-scorer"
    assert report["mean_margin"] == pytest.approx((1 + 0 + 1 - 1 + 1 + 12) / 6)


def test_pairwise_accuracy_takes_judge_values_as_they_are():
    out = pairwise_accuracy(PAIRWISE[:4], [1.0, 0.5, 0.5, 0.0])  # 0.5 = unparseable judge verdict
    assert out["sections"]["A"]["subsets"]["x"]["accuracy"] == pytest.approx(2 / 3)
    assert out["sections"]["A"]["accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="4 pairs but 3 values"):
        pairwise_accuracy(PAIRWISE[:4], [1.0, 0.5, 0.5])


def _group(name: str, chosen: float, rejected: list[tuple[float, str]], section: str = "C") -> list[Pair]:
    return [_pair(f"ticket {name}", _side(chosen, f"{name}c"), _side(r, f"{name}r{i}"), subset, section, name)
            for i, (r, subset) in enumerate(rejected)]


# Best-of-4 groups with hand-computed credits.
GROUPS = (_group("G1", 5, [(5, "k"), (3, "k"), (1, "k")])       # tied at the top with 1: 1/2
          + _group("G2", 5, [(5, "k"), (5, "k"), (1, "m")])     # tied with 2: 1/3; mixed subsets
          + _group("G3", 5, [(1, "k"), (2, "k"), (3, "k")])     # strictly on top: 1
          + _group("G4", 2, [(3, "m"), (1, "m"), (1, "m")])     # beaten: 0
          + _group("G5", 9, [(1, "k"), (2, "k")]))              # only 2 rejected: not a best-of-4 item


class TurnCounter:
    """A score that learned the surface: fewer assistant turns is better (right whenever the rejected side adds a
    turn: a premature transfer, an extra action)."""

    path = "turn-counter"

    def score(self, conversations):
        return [-sum(m["role"] == "assistant" for m in c) for c in conversations]


class ReadsTheLine:
    """A score that reads the task: the customer's line is L1001."""

    path = "reads-the-line"

    def score(self, conversations):
        return [0.0 if any("L1002" in m["content"] for m in c) else 1.0 for c in conversations]


def test_surface_matched_pairs_separate_a_surface_score_from_one_that_reads_the_task():
    call = '<tool_call>\n{"name": "enable_roaming", "arguments": {"line_id": "%s"}}\n</tool_call>'
    ask = [{"role": "user", "content": "Roaming does not work."}]

    def pair(chosen, rejected, subset):
        return Pair(prompt=ask, chosen=chosen, rejected=rejected, subset=subset, section="tau2-telecom",
                    group=subset + str(len(rejected)))

    right = [{"role": "assistant", "content": call % "L1001"}, {"role": "assistant", "content": "Done."}]
    wrong_line = [{"role": "assistant", "content": call % "L1002"}, {"role": "assistant", "content": "Done."}]
    transfer = [{"role": "assistant", "content": call % "L1001"}, {"role": "assistant", "content": "Transferring."},
                {"role": "assistant", "content": "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."}]
    pairs = [pair(right, wrong_line, "wrong_argument"), pair(right, transfer, "premature_transfer")]
    report = evaluate_rm(pairs, TurnCounter())
    assert report["pairwise"]["overall"]["all_pairs"] == 0.5  # the transfer (one more turn) loses, the tie is wrong
    matched = report["surface_matched"]
    assert matched["overall"]["n"] == 1 and matched["overall"]["all_pairs"] == 0.0
    assert set(matched["sections"]["tau2-telecom"]["subsets"]) == {"wrong_argument"}
    assert "| surface-matched |" in markdown_table(report)
    assert evaluate_rm(pairs, ReadsTheLine())["surface_matched"]["overall"]["all_pairs"] == 1.0


def test_best_of_4_tie_splitting_and_subsets_only_for_unmixed_groups():
    scorer = _scorer_for(GROUPS)
    report = evaluate_rm(GROUPS, scorer)
    bo = report["best_of_4"]
    c = bo["sections"]["C"]
    assert c["n"] == 4 and c["accuracy"] == pytest.approx((0.5 + 1 / 3 + 1 + 0) / 4)
    assert c["subsets"] == {"k": {"n": 2, "accuracy": pytest.approx(0.75)}, "m": {"n": 1, "accuracy": 0.0}}
    assert bo["overall"]["n"] == 4 and bo["overall"]["accuracy"] == pytest.approx(c["accuracy"])
    # Every distinct conversation scored once: a group's chosen side is shared by its pairs.
    distinct = {m["content"] for p in GROUPS for m in p.chosen + p.rejected}
    assert sorted(scorer.seen) == sorted(distinct) and len(scorer.seen) == 5 + 4 * 3 + 2
    assert report["conversations_scored"] == len(distinct)


def test_best_of_4_credit_rules():
    assert scalar_best_of_4_credit(1.0, [0.0, 0.5, 0.9]) == 1.0
    assert scalar_best_of_4_credit(1.0, [1.0, 0.5, 0.9]) == 0.5
    assert scalar_best_of_4_credit(1.0, [1.0, 1.0, 1.0]) == 0.25
    assert scalar_best_of_4_credit(1.0, [1.0, 2.0, 0.0]) == 0.0
    assert judge_best_of_4_credit([1.0, 0.5, 0.5]) == 0.25


def test_best_of_4_seeded_choice_of_three_when_more():
    many = _group("G6", 5, [(float(i), "k") for i in range(6)]) + _group("G7", 5, [(1, "k")] * 1)
    dup = many[:3] + [many[0]]  # a repeated rejected side is one side, not two
    assert best_of_4_groups(dup) == [[0, 1, 2]]
    picks = {tuple(best_of_4_groups(many, seed=s)[0]) for s in range(10)}
    assert all(len(p) == 3 and list(p) == sorted(p) and set(p) <= set(range(6)) for p in picks)
    assert len(picks) > 1  # the seed decides which three
    assert best_of_4_groups(many, seed=4) == best_of_4_groups(list(many), seed=4)  # deterministic
    assert len(best_of_4_groups(many)) == 1  # G7 (one rejected) is not an item


class ScoreReadingClient:
    """A scripted ChatClient: picks the continuation whose text carries the higher score; a tie -> no verdict."""

    name = "score-reader"

    def __init__(self):
        self.prompts = []

    def complete(self, conversations, n=1):
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            self.prompts.append(user)
            a, b = (_score_of(re.search(rf"<continuation_{x}>\n\[assistant\] (\S+)", user).group(1)) for x in "AB")
            out.append(["[[A]]" if a > b else "[[B]]" if b > a else "They look equally good."] * n)
        return out


def test_judge_path_values_best_of_4_as_product_and_dedupes_pairs():
    client = ScoreReadingClient()
    pairs = GROUPS + [GROUPS[0]]  # a repeated pair is judged once
    report = evaluate_judge(pairs, PairwiseJudge(client, seed=0), chunk=4)
    assert report["pairs_judged"] == len(GROUPS) == len(client.prompts)
    c = report["best_of_4"]["sections"]["C"]
    # G1: 0.5*1*1, G2: 0.5*0.5*1, G3: 1, G4: 0*1*1
    assert c["accuracy"] == pytest.approx((0.5 + 0.25 + 1 + 0) / 4)
    # pairwise: G1 .5,1,1  G2 .5,.5,1  G3 1,1,1  G4 0,1,1  G5 1,1 (+ the repeat of G1's first: .5)
    values = [.5, 1, 1, .5, .5, 1, 1, 1, 1, 0, 1, 1, 1, 1, .5]
    assert report["pairwise"]["overall"]["all_pairs"] == pytest.approx(sum(values) / len(values))
    assert report["kind"] == "judge" and report["model"] == "score-reader"
    assert report["judge"] == {"both_orders": False, "verdict": "text", "order_seed": 0, "judgments": 14,
                               "unparseable": 3, "chose_a": report["judge"]["chose_a"], "position_only": 0}


def _parse_md_table(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    assert rows[1] == ["---"] * 5
    return [rows[0]] + rows[2:]


def test_report_files_written_and_markdown_table_parses(tmp_path):
    pairs = PAIRWISE + GROUPS
    report = evaluate_rm(pairs, _scorer_for(pairs), seed=7)
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(report))
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000
    rows = _parse_md_table(paths["md"].read_text())
    assert rows[0] == ["section", "subset", "n", "pairwise acc", "best-of-4"]
    table = {(r[0], r[1]): r[2:] for r in rows[1:]}
    assert table[("A", "x")] == ["3", "0.667", "-"]
    assert table[("A", "*all*")] == ["4", "0.500", "-"]
    assert table[("C", "k")][2] == "0.750 (n=2)" and table[("C", "*all*")][2] == "0.458 (n=4)"
    overall = report["pairwise"]["overall"]
    assert table[("overall", "*mean of sections*")][:2] == [str(len(pairs)), f"{overall['accuracy']:.3f}"]
    for (section, subset), (n, acc, _) in table.items():  # every number agrees with report.json
        if section in report["pairwise"]["sections"]:
            d = report["pairwise"]["sections"][section]
            d = d if subset == "*all*" else d["subsets"][subset]
            assert int(n) == d["n"] and float(acc) == pytest.approx(d["accuracy"], abs=5e-4)
    assert report["seed"] == 7 and report["timestamp"]
    assert markdown_table(report) in paths["md"].read_text()


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_judge_over_an_openai_endpoint(tmp_path, capsys):
    f1, f2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_pairs(f1, PAIRWISE)
    write_pairs(f2, GROUPS)
    with ScriptedOpenAI([{"content": "[[A]]"}]) as server:
        rc = main(["--pairs", str(f1), "--pairs", str(f2), "--judge-model", "openai/stub",
                   "--judge-base-url", server.base_url, "--both-orders", "--limit", "10", "--out", str(tmp_path / "o")])
        assert rc == 0 and len(server.requests) == 2 * 10
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    # A judge that always answers A, asked in both orders, splits every pair.
    assert report["n_pairs"] == 10 and report["pairwise"]["overall"]["all_pairs"] == 0.5
    assert report["judge"]["both_orders"] is True and report["pairs_files"] == [str(f1), str(f2)]
    assert (tmp_path / "o" / "report.png").is_file()
    assert "| section | subset |" in capsys.readouterr().out
    # report.md says why: every verdict was A, so each pair got the same letter in both orders
    assert ("20 verdicts (text): 0 unparseable, 20 for the side shown first (A), 10 pairs given the same letter in "
            "both orders (decided by position alone)") in (tmp_path / "o" / "report.md").read_text()
    with pytest.raises(SystemExit):  # next-token logprobs come from a local engine only
        main(["--pairs", str(f1), "--judge-model", "openai/stub", "--judge-verdict", "logprob", "--out",
              str(tmp_path / "p")])
    assert "--judge-verdict logprob needs --judge-vllm" in capsys.readouterr().err


def test_cli_clear_errors_for_missing_or_broken_pairs(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["--pairs", str(missing), "--rm", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    write_pairs(broken, PAIRWISE[:1])
    broken.write_text(broken.read_text() + '{"prompt": "hi", "chosen": "a"}\n')
    assert main(["--pairs", str(broken), "--rm", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:2" in err and "rejected" in err
    good = tmp_path / "good.jsonl"
    write_pairs(good, PAIRWISE)
    with pytest.raises(SystemExit) as e:
        main(["--pairs", str(good), "--rm", str(tmp_path), "--both-orders", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert not (tmp_path / "o").exists()


def test_cli_scores_with_a_real_reward_model_folder(tmp_path, capsys):
    """An (untrained) scalar-head RM built from the tiny model, through RewardModelScorer for real."""
    from transformers import AutoTokenizer

    from rl.models import resolve_model
    from rl.rm.model import RM_META, load_sequence_classifier, write_meta

    base = resolve_model("tiny")
    rm = tmp_path / "rm"
    load_sequence_classifier(str(base)).save_pretrained(rm)
    AutoTokenizer.from_pretrained(base).save_pretrained(rm)
    (rm / RM_META).write_text(write_meta(256, [0.0, 1.0], str(base)))
    pairs_file = tmp_path / "p.jsonl"
    write_pairs(pairs_file, PAIRWISE + GROUPS)
    assert main(["--pairs", str(pairs_file), "--rm", str(base), "--out", str(tmp_path / "o")]) == 2
    assert "not a trained reward model" in capsys.readouterr().err  # a plain LM folder, no telerl_rm.json
    assert main(["--pairs", str(pairs_file), "--rm", str(rm), "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["model"] == str(rm) and report["n_pairs"] == len(PAIRWISE + GROUPS)
    assert report["best_of_4"]["overall"]["n"] == 4
    assert 0.0 <= report["pairwise"]["overall"]["accuracy"] <= 1.0
    # the same RM audited on a run's own episodes (rl.reward_audit), next to the static pairs
    from tests.test_reward_audit import _run_dir

    run = _run_dir(tmp_path, with_rm=False)
    out = tmp_path / "o2"
    assert main(["--pairs", str(pairs_file), "--rm", str(rm), "--rollouts", str(run), "--out", str(out)]) == 0
    audit = json.loads((tmp_path / "o2" / "report.json").read_text())["on_policy"]
    assert audit["scored_by"] == str(rm) and audit["episodes"] == 14
    assert 0.0 <= audit["overall"]["reward/rm_vs_verifier/pairwise_acc"] <= 1.0
    assert "On-policy audit" in (tmp_path / "o2" / "report.md").read_text()
