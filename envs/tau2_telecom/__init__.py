"""tau2-bench's telecom domain as an RL environment (wrapping the official tau2 implementation).

Start here: `session.TelecomSession` (reset / step / evaluate), `world.get_world` (parsed once per process),
`tasks.load_split` / `tasks.load_task_file`, `users.ScriptedUser` / `users.LLMUser`, `oracle.play_oracle`.
"""
