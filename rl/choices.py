"""Allowed values of the training settings, defined once: rl/config.py validates against them and the code that
dispatches on them (rl/algorithms.py, actors/reward_actor.py, rl/rm/model.py) imports them. No heavy imports.
The environment's own choices (modes, splits, ...) live in envs/tau2_telecom/choices.py, re-exported here."""

from envs.tau2_telecom.choices import MODES, POLICIES, PROMPTS, SPLITS, USERS

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "rft")
KL_KINDS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
TOKEN_AGGREGATIONS = ("token_mean",)  # average over loss tokens; the others average over sequences with any
MIXINGS = ("weighted", "gated", "multiplicative")  # how learned/judged scores join the checks (RewardConfig)
RM_NORMALIZATIONS = ("train_stats", "batch")
ENGINES = ("auto", "async", "in_process")  # rollout engine kind (actors/rollout_worker.py)
ROLLOUT_DTYPES = ("auto", "float32", "bfloat16")  # the rollout engine's weights and KV cache
TRANSPORTS = ("object_store", "collective")  # weight sync to the engines (actors/weight_sync.py, weight_transport.py)

__all__ = ["ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "ENGINES", "KL_KINDS", "MIXINGS", "MODES", "POLICIES", "PROMPTS",
           "RM_NORMALIZATIONS", "ROLLOUT_DTYPES", "SPLITS", "TOKEN_AGGREGATIONS", "TRANSPORTS", "USERS"]
