"""Allowed values of the environment's settings, defined once: the config schema (rl/config.py), the CLIs and the
environment code all import them from here. No imports, so loading a config never pulls in tau2."""

MODES = ("solo", "dual")  # solo: the agent also runs the phone's tools; dual: a simulated customer does
USERS = ("scripted", "llm")  # customer simulators in dual mode (envs/tau2_telecom/users.py)
POLICIES = ("manual", "workflow")  # tau2's two tech-support policy documents
# full: tau2's whole system prompt; compact: without the policy documents, short schemas; minimal: without the
# policy documents, tools as one `name(args)` line each
PROMPTS = ("full", "compact", "minimal")
SPLITS = ("small", "train", "test", "base", "full")  # tau2's packaged telecom splits
