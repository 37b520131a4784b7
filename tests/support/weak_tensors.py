"""Weak references to what an optimisation step holds, to see when its memory is freed."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from inference.invert import Distance


def step_tensors(images: torch.Tensor) -> list[torch.Tensor]:
    """The images of a step and every leaf of their graph: latents and noise maps."""
    found = [images]
    seen: set[int] = set()
    stack = [images.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf being optimised
            found.append(node.variable)
        stack.extend(parent for parent, _ in node.next_functions)
    return found


class Watched:
    """Wraps a distance factory: weak references to every batch's targets and step tensors."""

    def __init__(self, make_distance: Callable[[torch.Tensor], Distance]) -> None:
        self.make_distance = make_distance
        self.batches: list[tuple[int, list[weakref.ref[torch.Tensor]]]] = []
        self.alive_at_start: list[int] = []  # of all earlier batches' tensors, per new batch

    def __call__(self, targets: torch.Tensor) -> Distance:
        self.alive_at_start.append(self.alive())
        refs = [weakref.ref(targets)]
        self.batches.append((targets.shape[0], refs))
        inner = self.make_distance(targets)

        def distance(images: torch.Tensor) -> torch.Tensor:
            refs.extend(weakref.ref(tensor) for tensor in step_tensors(images))
            return inner(images)

        return distance

    def alive(self) -> int:
        return sum(ref() is not None for _, refs in self.batches for ref in refs)
