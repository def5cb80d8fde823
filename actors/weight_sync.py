"""Weight sync learner -> vLLM engine, through the Ray object store (works on CPU and GPU alike).

The learner's rank 0 gathers the full state dict (ZeRO-3) and puts it in the object store; each rollout
worker serialises it to safetensors bytes and hands the bytes to its engine's workers over vLLM's
collective RPC (vLLM's msgpack RPC turns raw tensors into lists, bytes pass intact), where this extension
reloads them in place. sync.transport = collective sends the same tensors over a process group instead
(actors/weight_transport.py: gloo on CPU, NCCL on GPU); the reload is the same.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


def state_dict_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in state_dict.items()})


# vLLM's in-place reload warns for layers that got no tensor from the checkpoint. Two of them get none by design: the
# rotary embedding (a computed cache, never saved) and a tied lm_head (its weight arrives as embed_tokens and is
# rebuilt below). Said on every sync, that is a wall of warnings about nothing; other layers still warn.
_EXPECTED_MISSES = ("RotaryEmbedding: Failed to load weights", "ParallelLMHead: Failed to load weights")


@contextmanager
def _quiet_expected_misses(tied: bool):
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    misses = _EXPECTED_MISSES if tied else _EXPECTED_MISSES[:1]

    def keep(record: logging.LogRecord) -> bool:
        return record.getMessage() not in misses

    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _tied_lm_head(model) -> torch.nn.Module | None:
    lm_head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    return lm_head if lm_head is not None and embed is not None and lm_head.weight is embed.weight else None


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls="actors.weight_sync.WeightSyncExtension"`)."""

    def load_weights_from_bytes(self, data: bytes) -> int:
        return self._reload(load_safetensors(data))

    def join_weight_group(self, group, first_rank: int) -> None:
        """Join the learner's weight group as rank first_rank + this worker's rank (sync.transport = collective)."""
        from actors.weight_transport import open_group

        self._weight_pg = open_group(group, first_rank + self.rank)

    def load_weights_from_group(self) -> int:
        """Receive one broadcast from learner rank 0 over the group joined above, and reload it."""
        from actors.weight_transport import receive

        return self._reload(receive(self._weight_pg))

    def _reload(self, weights: dict[str, torch.Tensor]) -> int:
        # reload_weights, not model.load_weights: on CPU vLLM repacks linear weights into oneDNN handles and
        # leaves `layer.weight` empty, so the plain loader fails ('Parameter' has no 'weight_loader').
        model = self.model_runner.get_model()
        with _quiet_expected_misses(tied=_tied_lm_head(model) is not None):
            self.model_runner.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        lm_head = _tied_lm_head(model)
        if lm_head is not None:
            # Tied embeddings: reload does not rebuild the lm_head's packed handle on CPU, so logits would keep
            # using the OLD embedding (measured: 0.85 nats off). Rebuild it explicitly.
            quant = getattr(lm_head, "quant_method", None)
            if quant is not None and hasattr(quant, "process_weights_after_loading"):
                quant.process_weights_after_loading(lm_head)
        return len(weights)
