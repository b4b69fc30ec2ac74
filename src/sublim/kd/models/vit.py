"""Vision Transformers in torchvision's layout for small images (KD_wo_CE's ViT_B and ViT_ETT).

Patch size image_size / 8 (4 at 32 px, 8 at 64 px), so 8 x 8 = 64 patches plus a class token
placed FIRST: 65 tokens. Learned position embedding, pre-LN encoder blocks (LayerNorm eps 1e-6,
nn.MultiheadAttention, GELU MLP, dropout 0), final LayerNorm, then the MEAN over all 65 tokens
(not the class token, as KD_wo_CE does) into a zero-initialised linear head.
Module names are torchvision's (conv_proj, class_token, encoder.pos_embedding,
encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp.0, mlp.3}, encoder.ln,
heads.head); torchvision files from before its MLP rename say mlp.linear_1 / mlp.linear_2.

Taps: stem (the 65 embedded tokens, before the position embedding), stage1..4 (the residual
stream after blocks at 1/4, 2/4, 3/4 and all of the depth), pool (the token mean), logits; token
features are (tokens, dim) per sample.
Generalized layers: 0 "patch_embed" (= stem), then every block "encoder.layers.encoder_layer_N":
13 for vit_b, 9 for vit_ett. No Flatten: the token mean is not one.
Init (torchvision's): patch conv truncated normal std sqrt(1 / fan_in), class token 0, position
embedding N(0, 0.02), attention in-projection Xavier uniform with zero biases, MLP Xavier
uniform with N(0, 1e-6) biases, LayerNorm 1/0, head zero.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .base import TapNet, Walk, _no_walk


class MLPBlock(nn.Sequential):
    """Linear-GELU-Dropout-Linear-Dropout (torchvision's `mlp.0` ... `mlp.4`)."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(0.0),
        )


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embedding, the blocks `layers.encoder_layer_N` and the final LayerNorm `ln`."""

    def __init__(self, seq_length: int, depth: int, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim))
        self.layers = nn.Sequential(
            OrderedDict(
                (f"encoder_layer_{i}", EncoderBlock(dim, heads, mlp_dim)) for i in range(depth)
            )
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)


class VisionTransformer(TapNet):
    """ViT with an 8 x 8 patch grid plus a class token, token-mean pooling and a linear head."""

    tap_names = ("stem", "stage1", "stage2", "stage3", "stage4", "pool")
    head_name = "heads"
    GRID = 8

    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        mlp_dim: int,
        num_classes: int = 100,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if image_size % self.GRID:
            raise ValueError(f"ViT image size must be a multiple of {self.GRID}, got {image_size}")
        self.patch_size = image_size // self.GRID
        self.conv_proj = nn.Conv2d(3, dim, self.patch_size, stride=self.patch_size)
        self.class_token = nn.Parameter(torch.empty(1, 1, dim))
        self.encoder = Encoder(self.GRID**2 + 1, depth, dim, heads, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))
        self._stages = {depth * k // 4 - 1: f"stage{k}" for k in range(1, 5)}
        self.reset_parameters()

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        """The linear head (TapNet's name for it)."""
        return self.heads.head

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """torchvision's ViT initialisation, drawn from `generator` (None: the global RNG)."""
        g = generator
        fan_in = self.conv_proj.in_channels * self.patch_size**2
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in), generator=g)
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.class_token)
        nn.init.normal_(self.encoder.pos_embedding, std=0.02, generator=g)
        for block in self.encoder.layers:
            attn = block.self_attention
            nn.init.xavier_uniform_(attn.in_proj_weight, generator=g)
            nn.init.zeros_(attn.in_proj_bias)
            nn.init.kaiming_uniform_(attn.out_proj.weight, a=math.sqrt(5), generator=g)
            nn.init.zeros_(attn.out_proj.bias)
            for linear in (block.mlp[0], block.mlp[3]):
                nn.init.xavier_uniform_(linear.weight, generator=g)
                nn.init.normal_(linear.bias, std=1e-6, generator=g)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def _forward_all(self, x: Tensor, walk: Walk = _no_walk) -> dict[str, Tensor]:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        out = {"stem": x}
        x = walk(x, "patch_embed") + self.encoder.pos_embedding
        for i, block in enumerate(self.encoder.layers):
            x = block(x)
            if i in self._stages:
                out[self._stages[i]] = x
            x = walk(x, f"encoder.layers.encoder_layer_{i}")
        out["pool"] = x = self.encoder.ln(x).mean(dim=1)
        out["logits"] = self.heads(x)
        return out
