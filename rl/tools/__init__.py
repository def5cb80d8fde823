"""Tools built on the core: ablation sweeps of `python -m rl.train` (rl.tools.sweep) and the OpenRLHF
--agent_func_path plugin that runs telerl's tau2 sessions and hybrid reward inside OpenRLHF (openrlhf_agent).
"""
