"""Running a model one block at a time, with the keyword arguments the model itself passes.

`capture` runs the model's own forward with every block replaced by a recording stub, so it learns
the hidden states entering block 0 and the exact kwargs each block receives (attention masks, which
may differ per block for sliding-window layers; rotary position embeddings in transformers 5.x)
without computing any block. `head` does the reverse: it runs the model's forward with stubs that
return given final hidden states, so the model's own final norm and LM head produce the logits.
Nothing here knows a model family.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def _stubbed(blocks: nn.ModuleList, make_stub: Callable[[int], Callable]) -> Iterator[None]:
    for i, block in enumerate(blocks):
        block.forward = make_stub(i)  # instance attribute shadows the class method
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors inside nested tuples, lists and dicts moved to `device` (block kwargs)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move every parameter and buffer that is not inside a block (embeddings, norms, head, rotary)."""
    inside = {id(t) for b in blocks for t in list(b.parameters()) + list(b.buffers())}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in inside and p.device != device:
                p.data = p.data.to(device)
        for key, b in module._buffers.items():
            if b is not None and id(b) not in inside and b.device != device:
                module._buffers[key] = b.to(device)


@dataclass
class BlockInputs:
    hidden: torch.Tensor  # [N, T, H] hidden states entering block 0, on the storage device
    kwargs: list[dict[str, Any]]  # per block, captured with batch size 1 (broadcasts to any batch)


def batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def capture(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int,
            device: torch.device, storage: torch.device) -> BlockInputs:
    """Hidden states entering block 0 for every window, and each block's kwargs.

    no_grad, not inference_mode: the captured tensors may later take part in autograd
    (reconstruction), which inference tensors cannot.
    """
    n_blocks = len(blocks)
    kwargs: list[dict[str, Any] | None] = [None] * n_blocks
    hidden: list[torch.Tensor] = []
    recording_kwargs = True

    def make_stub(i: int):
        def stub(hidden_states, *args, **kw):
            if args:
                raise TypeError(f"block {i} was called with extra positional arguments; pass them by keyword")
            if recording_kwargs:
                kwargs[i] = {k: v for k, v in kw.items()}
            elif i == 0:
                hidden.append(hidden_states.to(storage))
            if i == n_blocks - 1 or not recording_kwargs and i == 0:
                raise _StopForward
            return hidden_states
        return stub

    with _stubbed(blocks, make_stub):
        # batch of one: masks and position tensors then broadcast over any batch size
        with contextlib.suppress(_StopForward):
            model(input_ids=input_ids[:1].to(device), use_cache=False)
        recording_kwargs = False
        for sl in batches(len(input_ids), batch_size):
            with contextlib.suppress(_StopForward):
                model(input_ids=input_ids[sl].to(device), use_cache=False)
    return BlockInputs(torch.cat(hidden), [k or {} for k in kwargs])


def call_block(block: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def propagate(block: nn.Module, x: torch.Tensor, kwargs: dict[str, Any], batch_size: int,
              device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
    """Block outputs for all windows, batch by batch; `out` may be `x` itself (in place)."""
    out = torch.empty_like(x) if out is None else out
    for sl in batches(len(x), batch_size):
        out[sl] = call_block(block, x[sl].to(device), kwargs).to(out.device)
    return out


@torch.no_grad()
def head(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, final_hidden: torch.Tensor,
         device: torch.device) -> torch.Tensor:
    """Logits from the model's own final norm and LM head applied to the last block's outputs."""
    last = len(blocks) - 1

    def make_stub(i: int):
        def stub(hidden_states, *args, **kw):
            return final_hidden.to(hidden_states.device, hidden_states.dtype) if i == last else hidden_states
        return stub

    with _stubbed(blocks, make_stub):
        return model(input_ids=input_ids.to(device), use_cache=False).logits


class BlockRunner:
    """Moves one block at a time to the compute device when the model is offloaded to CPU."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device, offload: bool):
        self.blocks, self.device, self.offload = blocks, device, offload

    @contextlib.contextmanager
    def on_device(self, index: int) -> Iterator[nn.Module]:
        block = self.blocks[index]
        if self.offload:
            block.to(self.device)
        try:
            yield block
        finally:
            if self.offload:
                block.to("cpu")
