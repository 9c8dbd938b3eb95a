"""How much a step keeps for backward, and how a process's batch is split to fit (docs/pretraining.md,
"Memory").

``activation_bytes_per_sample`` counts the bytes of the tensors autograd saves for backward during the
method's ``embed`` (every view of a sample), with ``torch.autograd.graph.saved_tensors_hooks``, each
storage once and parameters excluded, on the CPU at batch 1 and 2: the difference is what one more
sample costs (constant terms such as cast weights cancel). It runs where the method's parameters are:
on the training GPU under the run's autocast (milliseconds), or on the CPU under CPU autocast
(bfloat16, whose casting rules are close to CUDA's; seconds). It is an estimate of activations only:
weights, gradients, optimizer state, the loss's similarity matrix and the allocator's workspace come on
top, which is why the default budget is 60% of the GPU's memory.

``plan_micro_batches`` then keeps the per-process batch (and so the recipe's global batch and negatives)
and picks the largest micro-batch, a divisor of it, that fits the budget (pretrain.step explains how the
gradient stays that of the whole batch).

``python -m ctssl.pretrain.memory`` prints the table docs/pretraining.md holds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ctssl.pretrain.step import batchnorm_buffers

GiB = 2 ** 30
DEFAULT_BUDGET = 0.6        # of the GPU's memory, for activations


def _saved_bytes(method: nn.Module, views: list[torch.Tensor]) -> int:
    params = {p.untyped_storage().data_ptr() for p in method.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:
            seen[key] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        method.embed(views)
    return sum(seen.values())


def activation_bytes_per_sample(method: nn.Module, crops, in_chans: int, precision: str) -> int:
    """Bytes saved for backward per sample (all its views) by ``method.embed`` (module docstring).
    ``crops``: the method's views (pretrain.views.ViewRecipe); the method is left as it was (running
    statistics, generators)."""
    buffers = batchnorm_buffers(method)
    saved = [b.clone() for b in buffers]
    was_training = method.training
    method.train()
    device = next(method.parameters()).device
    dtype = torch.float16 if precision == "fp16" and device.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))
    counts = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
            for batch in (1, 2):
                views = [torch.randn(batch, in_chans, view.size, view.size, device=device) for view in crops]
                counts.append(_saved_bytes(method, views))
    finally:
        for buffer, value in zip(buffers, saved):
            buffer.copy_(value)
        method.train(was_training)
    return max(1, counts[1] - counts[0])


def device_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def plan_micro_batches(batch: int, per_sample: int, micro_batch_size: int = 0, budget_gb: float | None = None,
                       device_bytes: int | None = None) -> dict:
    """The micro-batch of a ``batch``-sample step: ``micro_batch_size`` when set (a divisor of the batch),
    else the largest divisor whose activations fit the budget (``budget_gb``, or 60% of ``device_bytes``;
    neither: the whole batch, as on a CPU)."""
    if micro_batch_size:
        if batch % micro_batch_size:
            from ctssl.core.config import ConfigError

            raise ConfigError(f"memory.micro_batch_size {micro_batch_size} does not divide the per-process batch "
                              f"{batch}; valid sizes are {[d for d in range(1, batch + 1) if batch % d == 0]}.")
        micro, budget = micro_batch_size, None
    else:
        budget = budget_gb * GiB if budget_gb else (DEFAULT_BUDGET * device_bytes if device_bytes else None)
        fits = batch if budget is None else max(1, int(budget // per_sample))
        micro = max(d for d in range(1, batch + 1) if batch % d == 0 and d <= fits)
    return {"micro_batch_size": micro, "micro_batches": batch // micro,
            "activation_gb_per_sample": round(per_sample / GiB, 4),
            "estimated_activation_gb": round(micro * per_sample / GiB, 2),
            "whole_batch_activation_gb": round(batch * per_sample / GiB, 2),
            "budget_gb": round(budget / GiB, 1) if budget else None}


def recipe_per_sample(recipe: str, precision: str) -> tuple[int, int]:
    """(per-process-independent bytes per sample, global batch) of a pretraining recipe's model."""
    from ctssl.pretrain.backbones import build_backbone
    from ctssl.pretrain.config import resolve_pretrain_config
    from ctssl.pretrain.methods import build_method
    from ctssl.pretrain.views import crop_specs

    cfg = resolve_pretrain_config(recipe, None, [], {})
    in_chans = cfg.model.in_chans or (len(cfg.data.windows) if cfg.data.intensity == "windows" else 3)
    backbone, dim = build_backbone(cfg.model.backbone, in_chans, "scratch", None, cfg.model.drop_path)
    method = build_method(cfg.method.name, backbone, dim, cfg.method)
    return activation_bytes_per_sample(method, crop_specs(cfg.method.name, cfg), in_chans, precision), \
        cfg.data.global_batch_size


def memory_table(recipes=("simclr_rn50_ct", "simclr_rn50_imagenet", "dino_rn50_ct", "dino_vits16_ct"),
                 gpus=(4, 8), cards_gb=(40, 80, 141), precisions=("bf16", "no")) -> str:
    rows = ["| recipe | GPUs | card | precision | per-process batch | micro-batches | activations per micro-batch "
            "(whole batch) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for recipe in recipes:
        for precision in precisions:
            per_sample, global_batch = recipe_per_sample(recipe, precision)
            for n in gpus:
                batch = global_batch // n
                for card in cards_gb:
                    plan = plan_micro_batches(batch, per_sample, device_bytes=card * 10 ** 9)
                    rows.append(f"| {recipe} | {n} | {card} GB | {'fp32' if precision == 'no' else precision} | "
                                f"{batch} | {plan['micro_batches']} x {plan['micro_batch_size']} | "
                                f"{plan['estimated_activation_gb']} GiB ({plan['whole_batch_activation_gb']} GiB) |")
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(memory_table())
    print(f"\n(60% of the card for activations; {math.ceil(DEFAULT_BUDGET * 100)}% is memory.budget_gb's default)")
