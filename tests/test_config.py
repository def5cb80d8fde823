"""rl.config: schema defaults, YAML + override layering, and error messages that point at the culprit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rl.config import (
    Config,
    ConfigError,
    EnvConfig,
    config_to_yaml,
    load_config,
    parse_cli,
    validate,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(*args, **kwargs)
    return str(exc.value)


# ---------------------------------------------------------------- loading that works


def test_defaults_load():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == Config()
    assert cfg.env.mode == "solo" and cfg.env.max_errors == 10
    assert cfg.judge.model == "" and cfg.user_llm.api_key == "EMPTY"
    assert cfg.ray.address is None and cfg.run_dir == "runs/default"


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_laptop_yaml_loads():
    cfg = load_config(str(CONFIGS / "laptop.yaml"))
    assert (cfg.env.mode, cfg.env.user, cfg.env.split) == ("solo", "scripted", "train")
    assert cfg.env_pool.num_workers == 2
    assert cfg.ray.num_cpus == 2


def test_test_tiny_yaml_loads():
    cfg = load_config(str(CONFIGS / "test_tiny.yaml"))
    assert cfg.env.split == "small"
    assert cfg.env_pool.num_workers == 1
    assert cfg.env.max_turns == 4 and cfg.model.name == "tiny" and cfg.learner.num_ranks == 2
    assert cfg.env.policy == "manual"  # untouched keys keep schema defaults


def test_overrides_apply_typed_and_win_over_yaml():
    cfg = load_config(
        str(CONFIGS / "test_tiny.yaml"),
        ["env.max_turns=5", "user_llm.temperature=0.7", "ray.address=127.0.0.1:6379", "env.tasks_file=null"],
    )
    assert cfg.env.max_turns == 5 and type(cfg.env.max_turns) is int
    assert cfg.user_llm.temperature == pytest.approx(0.7)
    assert cfg.ray.address == "127.0.0.1:6379"
    assert cfg.env.tasks_file is None
    assert cfg.env.split == "small"  # from the file


def test_later_override_wins_and_empty_value_is_empty_string():
    cfg = load_config(None, ["judge.model=openai/x", "judge.model="])
    assert cfg.judge.model == ""


def test_empty_yaml_and_empty_section_are_no_ops(tmp_path):
    assert load_config(str(write(tmp_path, "", "empty.yaml"))) == Config()
    assert load_config(str(write(tmp_path, "env:\n  # max_turns: 3\n"))) == Config()


def test_llm_user_with_model_is_valid():
    cfg = load_config(None, ["env.mode=dual", "env.user=llm", "user_llm.model=openai/Qwen3-4B"])
    assert cfg.env.user == "llm" and cfg.user_llm.model == "openai/Qwen3-4B"


# ---------------------------------------------------------------- YAML errors


def test_unknown_top_level_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, """
        seed: 1
        # a comment
        sede: 2
    """)
    msg = load_error(str(path))
    assert "'sede'" in msg and "unknown" in msg
    assert f"{path}:3" in msg
    assert "seed" in msg and "env_pool" in msg  # lists valid keys


def test_unknown_nested_key_names_dotted_key_file_and_line(tmp_path):
    path = write(tmp_path, """
        seed: 1
        env:
          mode: solo
          max_turnz: 5
        ray:
          num_cpus: 2
    """)
    msg = load_error(str(path))
    assert "'env.max_turnz'" in msg
    assert f"{path}:4" in msg
    assert "max_turns" in msg


def test_unknown_section_with_children_points_at_section(tmp_path):
    path = write(tmp_path, """
        env:
          mode: solo
        trainer:
          lr: 0.1
    """)
    msg = load_error(str(path))
    assert "'trainer'" in msg and f"{path}:3" in msg


def test_wrong_type_names_key_value_expected_and_line(tmp_path):
    path = write(tmp_path, """
        env:
          split: small
          max_turns: "many"
    """)
    msg = load_error(str(path))
    assert "'env.max_turns'" in msg and "'many'" in msg and "integer" in msg
    assert f"{path}:3" in msg


@pytest.mark.parametrize(
    "yaml_text, key, fragment",
    [
        ("env:\n  max_turns: 2.5\n", "env.max_turns", "integer"),
        ("env:\n  max_turns: true\n", "env.max_turns", "integer"),
        ("env:\n  mode: null\n", "env.mode", "string"),
        ("env: 3\n", "env", "mapping"),
        ("user_llm:\n  temperature: hot\n", "user_llm.temperature", "number"),
    ],
)
def test_wrong_types_rejected(tmp_path, yaml_text, key, fragment):
    path = write(tmp_path, yaml_text)
    msg = load_error(str(path))
    assert f"'{key}'" in msg and fragment in msg and str(path) in msg


def test_bad_choice_names_key_and_allowed_values(tmp_path):
    path = write(tmp_path, """
        seed: 0
        env:
          mode: trio
    """)
    msg = load_error(str(path))
    assert "'env.mode'" in msg and "'trio'" in msg
    assert "solo" in msg and "dual" in msg
    assert f"{path}:3" in msg


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("env.policy=freestyle", "env.policy", "manual, workflow"),
        ("env.split=dev", "env.split", "small, train, test, base, full"),
        ("env.user=robot", "env.user", "scripted, llm"),
        ("env.max_turns=0", "env.max_turns", "> 0"),
        ("env_pool.max_restarts=-1", "env_pool.max_restarts", ">= 0"),
        ("judge.temperature=-0.5", "judge.temperature", ">= 0"),
        ("ray.num_cpus=0", "ray.num_cpus", "> 0"),
        ("rollout.engine=threads", "rollout.engine", "auto, async, in_process"),
        ("algorithm.update_epochs=0", "algorithm.update_epochs", "> 0"),
        ("reward.env_assertion_weight=-0.25", "reward.env_assertion_weight", "finite value >= 0"),
        ("reward.rm_weight=.nan", "reward.rm_weight", "finite value >= 0"),
        ("reward.task_weight=.inf", "reward.task_weight", "finite value >= 0"),
        ("rollout.top_p=1.5", "rollout.top_p", "(0, 1]"),
        ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization", "(0, 1]"),
        ("rollout.top_p=0.9", "algorithm.recompute_old_logprobs", "rollout.top_p = 0.9"),
        ("rollout.min_p=1", "rollout.min_p", "[0, 1)"),
        ("rollout.min_p=0.1", "algorithm.recompute_old_logprobs", "rollout.min_p = 0.1"),
        ("algorithm.demo_coef=-1", "algorithm.demo_coef", "finite value >= 0"),
        ("algorithm.demo_batch=0", "algorithm.demo_batch", "> 0"),
        ("algorithm.demo_limit=0", "algorithm.demo_limit", "> 0"),
        ("algorithm.tis_cap=2", "algorithm.recompute_old_logprobs", "algorithm.tis_cap = 2"),
        ("train.async_steps=2", "train.async_steps", "0 (synchronous) or 1"),
        ("sync.transport=nccl", "sync.transport", "object_store, collective"),
        ("sync.bucket_mb=0", "sync.bucket_mb", "> 0"),
    ],
)
def test_bad_values_rejected(override, key, fragment):
    msg = load_error(None, [override])
    assert f"'{key}'" in msg and fragment in msg and override in msg


def test_rft_refuses_dynamic_sampling():
    msg = load_error(None, ["algorithm.name=rft", "algorithm.drop_zero_variance_groups=true"])
    assert "'algorithm.drop_zero_variance_groups'" in msg and "every episode passed" in msg


def test_llm_user_requires_user_llm_model(tmp_path):
    path = write(tmp_path, """
        env:
          mode: dual
          user: llm
    """)
    msg = load_error(str(path))
    assert "'user_llm.model'" in msg
    assert f"{path}:3" in msg  # points at env.user, the line that made the model required


def test_duplicate_key_is_rejected_with_line(tmp_path):
    path = write(tmp_path, """
        env:
          max_turns: 3
          max_turns: 4
    """)
    msg = load_error(str(path))
    assert "duplicate" in msg and "'env.max_turns'" in msg and f"{path}:3" in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, """
        seed: 0
        env:
          mode: solo
          split: [small
        ray:
          num_cpus: 1
    """)
    msg = load_error(str(path))
    assert "syntax" in msg.lower()
    assert str(path) in msg
    # The unclosed flow sequence is reported where the parser gives up (line 5), not line 1.
    line = int(msg.split(f"{path}:", 1)[1].split(":", 1)[0])
    assert 4 <= line <= 6


def test_yaml_bad_indentation_names_line(tmp_path):
    path = write(tmp_path, "env:\n  mode: solo\n   split: small\n")
    msg = load_error(str(path))
    assert f"{path}:3" in msg and "syntax" in msg.lower()


def test_top_level_list_rejected(tmp_path):
    path = write(tmp_path, "- seed\n- env\n")
    msg = load_error(str(path))
    assert str(path) in msg and "mapping" in msg


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "missing.yaml"
    msg = load_error(str(missing))
    assert str(missing) in msg and "not found" in msg


# ---------------------------------------------------------------- override errors


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("env.nope=1", "'env.nope'"),
        ("env.max_turns=x", "'env.max_turns'"),
        ("garbage-without-equals", "key=value"),
        ("=5", "key=value"),
        ("env=3", "'env'"),
        ("env.mode=[", "cannot parse"),
    ],
)
def test_bad_override_names_the_override(override, fragment):
    msg = load_error(str(CONFIGS / "test_tiny.yaml"), [override])
    assert f"'{override}'" in msg
    assert fragment in msg


def test_override_type_error_says_what_was_expected():
    msg = load_error(None, ["env.max_turns=x"])
    assert "'x'" in msg and "integer" in msg


# ---------------------------------------------------------------- validate / snapshot


def test_validate_rejects_hand_built_config():
    with pytest.raises(ConfigError, match=r"env\.mode.*solo, dual"):
        validate(Config(env=EnvConfig(mode="trio")))
    assert validate(Config()) == Config()


def test_config_to_yaml_round_trips(tmp_path):
    cfg = load_config(
        str(CONFIGS / "laptop.yaml"),
        ["env.max_turns=7", "judge.model=openai/judge", "judge.base_url=http://127.0.0.1:8000/v1",
         "ray.address=auto", "env.tasks_file=tasks/x.json", "seed=42"],
    )
    snapshot = write(tmp_path, config_to_yaml(cfg), "snapshot.yaml")
    assert load_config(str(snapshot)) == cfg


# ---------------------------------------------------------------- parse_cli


def test_parse_cli_loads_config_and_overrides():
    cfg, ns = parse_cli(["--config", str(CONFIGS / "test_tiny.yaml"), "env.max_turns=3", "seed=9"])
    assert cfg.env.max_turns == 3 and cfg.seed == 9 and cfg.env.split == "small"
    assert ns.config == str(CONFIGS / "test_tiny.yaml")
    assert ns.overrides == ["env.max_turns=3", "seed=9"]


def test_parse_cli_takes_overrides_between_and_after_flags():
    def flags(p):
        p.add_argument("--lr", type=float)
        p.add_argument("--from-rollouts", nargs="+", default=None)

    cfg, ns = parse_cli(["--config", str(CONFIGS / "test_tiny.yaml"), "seed=9", "--lr", "0.5", "env.max_turns=3",
                         "--from-rollouts", "a", "b"], add_arguments=flags)
    assert cfg.seed == 9 and cfg.env.max_turns == 3 and ns.lr == 0.5 and ns.from_rollouts == ["a", "b"]


def test_bench_learning_reads_overrides_anywhere(tmp_path, monkeypatch):
    from bench import bench_learning

    seen = {}
    monkeypatch.setattr(bench_learning, "_recipe", lambda *a: seen.setdefault("overrides", a[-1]) and {"rft": []})
    monkeypatch.setattr(bench_learning, "_train", lambda *a: (_ for _ in ()).throw(SystemExit("stop here")))
    with pytest.raises(SystemExit, match="stop here"):
        bench_learning.main(["--out", str(tmp_path), "env.max_turns=20", "--seeds", "3", "algorithm.update_epochs=2"])
    assert seen["overrides"] == ["env.max_turns=20", "algorithm.update_epochs=2"]


def test_parse_cli_without_args_gives_defaults():
    cfg, ns = parse_cli([])
    assert cfg == Config() and ns.config is None and ns.overrides == []


def test_parse_cli_bad_key_exits_2_with_message_on_stderr(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--config", str(CONFIGS / "test_tiny.yaml"), "env.bogus=1"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "'env.bogus'" in captured.err and "env.bogus=1" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_parse_cli_bad_yaml_key_exits_2_naming_file_line(tmp_path, capsys):
    path = write(tmp_path, "seed: 1\nenv:\n  max_turns: many\n")
    with pytest.raises(SystemExit) as exc:
        parse_cli(["--config", str(path)])
    assert exc.value.code == 2
    assert f"{path}:3" in capsys.readouterr().err


def test_base_file_is_loaded_first_and_errors_point_at_the_right_file(tmp_path):
    (tmp_path / "parent.yaml").write_text("seed: 3\nenv:\n  max_turns: 7\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nenv:\n  max_turns: 9\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.seed, cfg.env.max_turns) == (3, 9)
    (tmp_path / "parent.yaml").write_text("seed: 3\nenv:\n  max_turnz: 7\n")
    with pytest.raises(ConfigError, match=r"parent.yaml:3: config key 'env.max_turnz' is unknown"):
        load_config(str(tmp_path / "child.yaml"))
    (tmp_path / "parent.yaml").write_text("base: child.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(tmp_path / "child.yaml"))


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                                        if "sweeps" not in p.parts))
def test_every_shipped_config_loads(path):
    load_config(path)


def test_top_p_below_one_trains_on_the_learners_own_logprobs():
    cfg = load_config(None, ["rollout.top_p=0.9", "algorithm.recompute_old_logprobs=true"])
    assert cfg.rollout.top_p == 0.9 and cfg.algorithm.recompute_old_logprobs


def test_rollout_workers_sample_with_distinct_seeds():
    from actors.rollout_worker import RolloutSettings

    cfg = load_config(None, ["seed=7", "rollout.num_workers=3"])
    assert [RolloutSettings.from_config(cfg, "m", worker=i).seed for i in range(3)] == [7, 8, 9]


def test_learner_warmup_becomes_deepspeeds_warmup_then_constant_schedule():
    from actors.learner import LearnerSettings, deepspeed_config

    ds = deepspeed_config(LearnerSettings.from_config(load_config(None, ["learner.lr=5e-4", "learner.warmup_steps=20"]),
                                                      "model"), use_gpu=False)
    assert ds["scheduler"] == {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 5e-4,
                                                              "warmup_type": "linear", "warmup_num_steps": 20}}
    assert "scheduler" not in deepspeed_config(LearnerSettings.from_config(load_config(None, []), "model"), False)


def test_redacted_yaml_hides_api_keys_and_still_loads(tmp_path):
    from rl.config import redacted_yaml

    text = redacted_yaml(load_config(None, ["user_llm.api_key=sk-secret", "judge.api_key=sk-other"]))
    assert "sk-secret" not in text and "sk-other" not in text and text.count("'***'") == 2
    (tmp_path / "telerl.yaml").write_text(text)
    assert load_config(str(tmp_path / "telerl.yaml")).user_llm.api_key == "***"


def test_an_integer_for_an_optional_float_key_loads_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # omegaconf warns about the implicit int -> float conversion
        cfg = load_config(None, ["reward.timeout_s=5", "rollout.timeout_s=null", "learner.timeout_s=60"])
    assert (cfg.reward.timeout_s, cfg.rollout.timeout_s, cfg.learner.timeout_s) == (5.0, None, 60.0)
    assert isinstance(cfg.reward.timeout_s, float)
