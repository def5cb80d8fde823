"""rm.train_layers: a reward model that trains only its top layers, on real DeepSpeed ZeRO-3 ranks (gloo, 2 Ray
actors, the tiny model): the frozen weights come out bit-identical, the trained ones move and the loss falls."""
import pytest
import ray
import torch

from tests.conftest import REPO_ROOT
from tests.test_rm_learner import _pairs


def test_only_the_top_layer_norm_and_head_train(tmp_path):
    from safetensors.torch import load_file

    from actors.rm_learner import RewardModelGroup, RewardModelSettings
    from rl.models import resolve_model
    from rl.rm.model import RM_META, write_meta

    path = str(resolve_model("tiny"))  # 2 layers: layer 0 and the embeddings stay, layer 1 + norm + head train
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT}})
    try:
        group = RewardModelGroup(RewardModelSettings(model_path=path, lr=3e-3, micro_batch_size=2, train_layers=1),
                                 num_ranks=2, use_gpu=False)
        try:
            pairs, _ = _pairs(path)
            first = group.train_step(pairs)
            for _ in range(10):
                last = group.train_step(pairs)
            group.save_hf(str(tmp_path / "rm"), {RM_META: write_meta(256, [0.0, 1.0], "tiny")})
        finally:
            group.shutdown()
    finally:
        ray.shutdown()
    assert last["loss"] < first["loss"] * 0.5

    base = load_file(f"{path}/model.safetensors")
    trained = load_file(tmp_path / "rm" / "model.safetensors")
    frozen = [k for k in base if k.startswith("model.") and not k.startswith(("model.layers.1.", "model.norm."))]
    moved = [k for k in base if k.startswith(("model.layers.1.", "model.norm."))]
    assert frozen and moved and "model.layers.0.mlp.down_proj.weight" in frozen
    for k in frozen:
        assert torch.equal(trained[k], base[k]), k
    assert all(not torch.equal(trained[k], base[k]) for k in moved if k.endswith("proj.weight"))


def test_train_layers_names_what_is_wrong():
    from rl.models import resolve_model
    from rl.rm.model import load_sequence_classifier, train_only_top_layers

    model = load_sequence_classifier(str(resolve_model("tiny")))
    with pytest.raises(ValueError, match="got 3, the model has 2 layers"):
        train_only_top_layers(model, 3)
    train_only_top_layers(model, 1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("model.layers.1.", "model.norm.", "score.")) for n in trained)
    assert "score.weight" in trained


def test_more_train_layers_than_the_model_has_is_a_config_error_before_ray_starts(tmp_path, capsys):
    from rl.rm.pairs.format import Pair, write_pairs
    from rl.rm.train import main as rm_train

    write_pairs(tmp_path / "pairs.jsonl", [Pair(prompt=[{"role": "user", "content": "No service."}],
                                                chosen=[{"role": "assistant", "content": "Fixed the APN."}],
                                                rejected=[{"role": "assistant", "content": "Transferring you."}],
                                                subset="s", section="tau2-telecom", group="g")])
    assert rm_train(["--config", f"{REPO_ROOT}/configs/rm_tiny.yaml", f"run_dir={tmp_path / 'run'}",
                     f"rm.train_file={tmp_path / 'pairs.jsonl'}", "rm.train_layers=5"]) == 2
    assert "config key 'rm.train_layers': got 5, tiny has 2 layers" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "run").exists()
