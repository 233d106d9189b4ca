"""R1-Omni's projectors and instruction gate, tower-free.

Written from the published architecture (HumanOmni "all in one small"), with
the same module names so that a released checkpoint's keys load unchanged:

- ``mm_projector``: three branches fed the same SigLIP patch tokens
  ``[B, T, N, C]`` (``N`` a square grid):
  * ``video`` and ``body``: a two-block RegNet-style stage (``s1_*``), a 3-D
    convolution (kernel 2, stride (1, 2, 2), temporal padding 1, the extra
    last time step dropped) with SiLU (``sampler_*``), a second stage
    (``s2_*``) and an MLP readout (``readout_*``): ``T x (h/2) x (w/2)`` tokens;
  * ``face``: an MLP per token (``mlp_2xgelu_face``), then a bilinear 2x
    downsampling of each frame's grid: the same number of tokens.
- ``bert_gate``: BERT's CLS vector of the instruction -> Linear -> GELU ->
  Linear(3) -> softmax: the weights that mix the three branches.
- ``audio_projector``: Linear -> GELU -> Linear on pooled Whisper frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNormAct2d(nn.LayerNorm):
    """Channel LayerNorm on ``[B, C, H, W]`` followed by an optional SiLU."""

    def __init__(self, channels: int, act: bool = True, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return self.act(x.permute(0, 3, 1, 2))


class ConvNormAct(nn.Module):
    """Conv2d without bias, channel LayerNorm, optional SiLU (keys ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
        self.bn = LayerNormAct2d(cout, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    """Channel attention: global mean -> 1x1 conv -> SiLU -> 1x1 conv -> sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class Bottleneck(nn.Module):
    """RegNet-Y style block: 1x1, depthwise 3x3, squeeze-excite, 1x1, residual, SiLU."""

    def __init__(self, cin: int, cout: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 1)
        self.conv2 = ConvNormAct(cout, cout, 3, groups=cout)
        self.se = SqueezeExcite(cout, int(round(cin * se_ratio)))
        self.conv3 = ConvNormAct(cout, cout, 1, act=False)
        self.downsample = ConvNormAct(cin, cout, 1, act=False) if cin != cout else nn.Identity()
        self.act3 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(y + self.downsample(x))


class RegStage(nn.Module):
    """``depth`` bottleneck blocks named ``b1``, ``b2``, ..."""

    def __init__(self, depth: int, cin: int, cout: int) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", Bottleneck(cin if i == 0 else cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


def mlp(cin: int, hidden: int, depth: int = 2) -> nn.Sequential:
    """Linear, then (GELU, Linear) ``depth - 1`` times: keys ``0``, ``2``, ..."""
    layers: list[nn.Module] = [nn.Linear(cin, hidden)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


def _sampler(hidden: int) -> nn.Sequential:
    conv = nn.Conv3d(hidden, hidden, kernel_size=2, stride=(1, 2, 2), padding=(1, 0, 0))
    return nn.Sequential(conv, nn.SiLU())


class AllInOneSmall(nn.Module):
    """The three-branch video projector (``mm_projector_type = all_in_one_small``)."""

    def __init__(self, vision_dim: int, hidden: int, depth: int = 2) -> None:
        super().__init__()
        self.s1_video = RegStage(depth, vision_dim, hidden)
        self.s1_body = RegStage(depth, vision_dim, hidden)
        self.sampler_video = _sampler(hidden)
        self.sampler_body = _sampler(hidden)
        self.s2_video = RegStage(depth, hidden, hidden)
        self.s2_body = RegStage(depth, hidden, hidden)
        self.readout_video = mlp(hidden, hidden)
        self.readout_body = mlp(hidden, hidden)
        self.mlp_2xgelu_face = mlp(vision_dim, hidden)

    @staticmethod
    def _grid(n: int) -> int:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"vision tokens per frame must form a square grid, got {n}")
        return side

    def _conv_branch(self, x: torch.Tensor, s1: nn.Module, sampler: nn.Module, s2: nn.Module,
                     readout: nn.Module) -> torch.Tensor:
        b, t, n, c = x.shape
        side = self._grid(n)
        y = x.reshape(b * t, side, side, c).permute(0, 3, 1, 2)  # [(b t), c, h, w]
        y = s1(y)
        d = y.shape[1]
        y = y.reshape(b, t, d, side, side).permute(0, 2, 1, 3, 4)  # [b, d, t, h, w]
        y = sampler(y)[:, :, :-1]  # temporal padding adds one step; drop it
        t2, h2, w2 = y.shape[2:]
        y = y.permute(0, 2, 1, 3, 4).reshape(b * t2, d, h2, w2)
        y = s2(y)
        y = y.reshape(b, t2, d, h2, w2).permute(0, 1, 3, 4, 2).reshape(b, t2 * h2 * w2, d)
        return readout(y)

    def _face_branch(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        side = self._grid(n)
        y = self.mlp_2xgelu_face(x.reshape(b * t, n, c))  # [(b t), n, d]
        d = y.shape[-1]
        y = y.reshape(b * t, side, side, d).permute(0, 3, 1, 2)
        half = math.ceil(side / 2)
        y = F.interpolate(y, size=(half, half), mode="bilinear")
        return y.permute(0, 2, 3, 1).reshape(b, t * half * half, d)

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Project ``tokens [B, T, N, C]`` and mix the branches with ``weights [B, 3]``."""
        video = self._conv_branch(tokens, self.s1_video, self.sampler_video, self.s2_video, self.readout_video)
        body = self._conv_branch(tokens, self.s1_body, self.sampler_body, self.s2_body, self.readout_body)
        face = self._face_branch(tokens)
        w = weights.to(video.dtype)[:, :, None, None]
        return video * w[:, 0] + body * w[:, 1] + face * w[:, 2]

    @staticmethod
    def tokens_out(frames: int, per_frame: int) -> int:
        """How many LLM tokens ``frames x per_frame`` vision tokens become."""
        half = math.ceil(math.isqrt(per_frame) / 2)
        return frames * half * half


def bert_gate(bert_dim: int, hidden: int = 3584, branches: int = 3) -> nn.Sequential:
    """The instruction gate's MLP (softmax applied by the caller)."""
    return nn.Sequential(nn.Linear(bert_dim, hidden), nn.GELU(), nn.Linear(hidden, branches))
