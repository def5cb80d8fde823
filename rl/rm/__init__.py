"""Reward models and judges: preference pairs (rl.rm.pairs), the Bradley-Terry reward model (model) with its
training (train) and RewardBench-style evaluation (eval), and generative LLM judges (judges). The reward actor
(actors/reward_actor.py) mixes their scores into the hybrid reward; the RM's ZeRO-3 ranks are actors/rm_learner.py.
"""
