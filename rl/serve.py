"""Serve a trained policy behind an OpenAI-compatible server (vLLM's), with the chat template it was trained with and
the tool-call parser that reads what that template writes (hermes: `<tool_call>{"name": ..., "arguments": ...}
</tool_call>`), so that clients - `rl.evaluate --endpoint`, tau2-bench's own runner, any OpenAI SDK - get
`tool_calls` back.

    python -m rl.serve runs/learn_tiny [--port 8000] [--host 127.0.0.1] [--name NAME] [key=value ...]
                       [-- more vLLM server flags]

RUN_DIR means the policy the run exported when it finished (RUN_DIR/model) and its config; a model folder written by
rl.train or rl.sft brings its config as telerl.yaml (`--config` gives another). The context length, and on CPU the
KV-cache size and float32 weights, come from the config's rollout section, as in training; `key=value` overrides
change them. tau2-bench's own runner sends tau2's full prompt (~10k tokens in the tiny tokenizer), longer than the
laptop configs' 4096: `rollout.max_model_len=16384 -- --hf-overrides '{"max_position_embeddings": 16384}'` (RoPE
models have no position table, so vLLM's length check is the only limit; past the length it was trained on, a model
answers worse). Bound to 127.0.0.1 unless --host says otherwise: the server has no authentication.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rl.config import Config, ConfigError, engine_dtype


def serve_command(model_dir: str, cfg: Config, host: str, port: int, name: str, on_gpu: bool,
                  extra: list[str]) -> list[str]:
    """The vLLM OpenAI server's command line for `model_dir` (argv, starting with the Python interpreter)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--host", host, "--port", str(port), "--served-model-name", name,
           "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
           "--max-model-len", str(cfg.rollout.max_model_len), "--seed", str(cfg.seed)]
    template = Path(model_dir) / "chat_template.jinja"
    if template.is_file():  # the template the policy was trained with, not a default
        cmd += ["--chat-template", str(template)]
    cmd += ["--dtype", engine_dtype(cfg.rollout.dtype, on_gpu)]  # what the rollout workers use
    if on_gpu:
        cmd += ["--gpu-memory-utilization", str(cfg.rollout.gpu_memory_utilization)]
    else:  # as the rollout workers on CPU: eager, a fixed KV cache
        cmd += ["--enforce-eager",
                "--kv-cache-memory-bytes", str(int(cfg.rollout.kv_cache_gib * (1 << 30)))]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m rl.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="RUN_DIR | MODEL_DIR | tiny | smollm2-135m")
    ap.add_argument("--config", metavar="FILE", help="default: the model's own (config.yaml / telerl.yaml)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. "
                    "rollout.max_model_len=16384")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--name", default=None, help="the served model name (default: the folder's name)")
    ap.add_argument("--dry-run", action="store_true", help="print the server command instead of running it")
    args = ap.parse_intermixed_args(argv)

    from rl.model_agent import load_policy
    from rl.models import ModelNotFoundError

    try:
        cfg, model_dir = load_policy(args.model, args.config, args.overrides)
    except (ConfigError, FileNotFoundError, ModelNotFoundError) as e:
        print(f"rl.serve: {e}", file=sys.stderr)
        return 2
    import torch

    name = args.name or Path(args.model.rstrip("/")).name
    cmd = serve_command(model_dir, cfg, args.host, args.port, name, torch.cuda.is_available(), extra)
    print(f"rl.serve: {name} at http://{args.host}:{args.port}/v1 ({model_dir})", file=sys.stderr)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execv(cmd[0], cmd)  # the server replaces this process: Ctrl-C and signals reach it directly


if __name__ == "__main__":
    sys.exit(main())
