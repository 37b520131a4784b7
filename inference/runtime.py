"""How the inference process runs the networks it only evaluates: PyTorch, or OpenVINO on a CPU.

Rendering (a blend's synthesis network) and the encoders' forward pass need no gradients, so
PyTorch runs them under `torch.inference_mode` (no autograd records, no version counters);
inversion needs autograd and never comes here. `models.runtime = "openvino"` converts each of
those networks once at start-up into an OpenVINO model compiled for this CPU, which renders a
1024 px face ~2.4x faster than eager PyTorch and encodes it ~1.4x faster on a 2-core CPU
(bench/README.md#runtime, where `torch.compile` was measured too: slower than OpenVINO on the
render and no faster than eager on the encoder, so it was dropped). The converted networks take
one face per call: on a CPU a batch is no faster than its faces one by one, and a fixed shape
is what lets OpenVINO plan every layer ahead.

cuDNN autotuning: the inference process turns it on when it runs on CUDA. Its shapes are fixed
per batch size (the generator's resolution, the encoder's input), so each of the few batch sizes
is tuned once and then runs the fastest kernels; face detection, whose photo sizes vary, runs in
the prepare processes, where it stays off (inference/prepare_pool.py). Not yet measured on a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from inference.encoders import FaceEncoder
from inference.errors import ModelLoadError
from inference.stylegan2 import Generator

Runtime = Literal["torch", "openvino"]

# OpenVINO picks bfloat16 on CPUs that have it unless told otherwise: results must stay
# within 1e-3 of PyTorch's float32.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class RuntimeUnavailable(ModelLoadError):
    """The configured runtime cannot run here; str() is one line with the fix."""


def tune_backends(device: torch.device) -> None:
    """cuDNN autotuning on for a CUDA inference process (see the module docstring)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"


class Networks:
    """Forward passes of the evaluation-only networks, in PyTorch without autograd."""

    def synthesis(self, generator: Generator, ws: Tensor, dtype: torch.dtype) -> Tensor:
        """generator.synthesis with its stored noise: [B, num_ws, w_dim] -> [B, 3, R, R]."""
        with torch.inference_mode():
            return generator.synthesis(ws, noise_mode="const", dtype=dtype)

    def encode(self, encoder: FaceEncoder, images: Tensor) -> Tensor:
        """images [B, C, H, W] in [-1, 1] -> W+ codes [B, num_ws, w_dim]."""
        with torch.inference_mode():
            return encoder(images)


class OpenVinoNetworks(Networks):
    """Every given network converted and compiled for the CPU once; one face per call."""

    def __init__(self, generators: Iterable[Generator], encoders: Iterable[FaceEncoder]) -> None:
        try:
            import openvino
        except ImportError:
            raise RuntimeUnavailable(
                'models.runtime = "openvino" needs the openvino package: '
                'pip install "toonify-bot[openvino]", or set models.runtime = "torch"'
            ) from None
        self._core = openvino.Core()
        self._convert = openvino.convert_model
        self._compiled: dict[nn.Module, Any] = {}
        for generator in generators:
            if generator not in self._compiled:
                example = generator.w_avg.float().expand(1, generator.num_ws, -1).contiguous()
                self._compiled[generator] = self._compile(_Synthesis(generator), example)
        for encoder in encoders:
            if encoder not in self._compiled:
                size = encoder.arch.input_size
                example = torch.zeros(1, encoder.arch.in_channels, size, size)
                self._compiled[encoder] = self._compile(_Codes(encoder), example)

    def synthesis(self, generator: Generator, ws: Tensor, dtype: torch.dtype) -> Tensor:
        """In float32 whatever `dtype` (load_networks refuses another one)."""
        return self._run(self._compiled[generator], ws.float())

    def encode(self, encoder: FaceEncoder, images: Tensor) -> Tensor:
        with torch.inference_mode():
            inputs = encoder.resize_input(images)
        return self._run(self._compiled[encoder], inputs)

    def _compile(self, module: nn.Module, example: Tensor) -> Any:
        """Trace `module` at `example`'s shape (static: batch 1) and compile it for the CPU."""
        with warnings.catch_warnings(), torch.no_grad():
            # Python branches on shapes are taken once at the traced shape, which is the
            # only shape the compiled model accepts: the tracer's warning does not apply.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            model = self._convert(module, example_input=example, input=[tuple(example.shape)])
        return self._core.compile_model(model, "CPU", OPENVINO_CONFIG)

    @staticmethod
    def _run(compiled: Any, batch: Tensor) -> Tensor:
        """The compiled model on each row of `batch` in turn; a float32 CPU tensor."""
        request = compiled.create_infer_request()
        rows = []
        for row in batch.detach().cpu().contiguous().split(1):
            request.infer({0: row.numpy()})
            rows.append(torch.from_numpy(request.get_output_tensor(0).data.copy()))
        return torch.cat(rows)


class _Synthesis(nn.Module):
    """What rendering runs: the synthesis network with the checkpoint's stored noise."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, ws: Tensor) -> Tensor:
        return self.generator.synthesis(ws, noise_mode="const")


class _Codes(nn.Module):
    """An encoder from its resized input on (the antialiased resize stays in PyTorch)."""

    def __init__(self, encoder: FaceEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: Tensor) -> Tensor:
        return self.encoder.codes(inputs)


def load_networks(
    runtime: Runtime,
    device: torch.device,
    dtype: torch.dtype,
    generators: Iterable[Generator],
    encoders: Iterable[FaceEncoder],
) -> Networks:
    """The configured runtime, with `generators` and `encoders` (on `device`, rendering in
    `dtype`) ready to run in it; RuntimeUnavailable says why it cannot."""
    if runtime == "torch":
        return Networks()
    if device.type != "cpu":
        raise RuntimeUnavailable(
            f'models.runtime = "openvino" runs on the CPU, but models.device is {device}: '
            'set models.runtime = "torch" (or models.device = "cpu")'
        )
    if dtype != torch.float32:
        raise RuntimeUnavailable(
            'models.runtime = "openvino" renders in float32 only: set models.dtype = "float32"'
        )
    return OpenVinoNetworks(generators, encoders)
