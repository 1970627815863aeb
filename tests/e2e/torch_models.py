"""Small PyTorch reference networks and an ONNX export helper, shared by tests and benchmarks.

The networks are written by hand (no torchvision, no transformers) and kept small so a test
that exports and runs one stays fast:

* :class:`ResNet` — a ResNet-style CNN: conv/BN/ReLU stem, max-pool, several stages of basic
  residual blocks (1x1 projection shortcuts where the shape changes), global average pool, fc.
* :class:`BertEncoder` — a BERT-style encoder: word + position (+ token type) embeddings,
  LayerNorm, several post-norm encoder layers with multi-head self-attention and a GELU MLP,
  and a tanh pooler over the first token.

Importing this module needs torch; callers guard with ``pytest.importorskip("torch")``.

>>> import torch
>>> model = resnet(seed=0)
>>> tuple(model(torch.zeros(1, 3, 16, 16)).shape)
(1, 10)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# ResNet-style CNN


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers and a residual connection (projected when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: ``widths`` gives each stage's channels, ``blocks`` its block count."""

    def __init__(
        self,
        widths: Sequence[int] = (8, 16, 32),
        blocks: Sequence[int] = (1, 1, 1),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(y), 1))


# ---------------------------------------------------------------------------------------------
# BERT-style encoder


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 100
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    intermediate: int = 64
    max_positions: int = 32
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        # Like BERT: position ids are a buffer sliced to the sequence length.
        self.register_buffer(
            "position_ids", torch.arange(cfg.max_positions).unsqueeze(0), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = self.position_ids[:, :seq]
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.norm(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        context = torch.matmul(probs, v).transpose(1, 2)
        b, s = context.shape[0], context.shape[1]
        return self.out(context.reshape(b, s, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer, as in BERT."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.up = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = nn.GELU()
        self.down = nn.Linear(cfg.intermediate, cfg.hidden)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, mask_bias))
        return self.norm2(x + self.down(self.act(self.up(x))))


class BertEncoder(nn.Module):
    """Embeddings, encoder layers and pooler; returns (last hidden state, pooled output)."""

    def __init__(self, cfg: BertConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or BertConfig()
        self.embeddings = BertEmbeddings(self.cfg)
        self.layers = nn.ModuleList(EncoderLayer(self.cfg) for _ in range(self.cfg.layers))
        self.pooler = nn.Linear(self.cfg.hidden, self.cfg.hidden)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # (batch, seq) 1/0 mask -> (batch, 1, 1, seq) additive bias, as BERT does.
        mask = attention_mask[:, None, None, :].to(torch.float32)
        mask_bias = (1.0 - mask) * -10000.0
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask_bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled


# ---------------------------------------------------------------------------------------------
# Construction with deterministic weights, example inputs, export


def _randomize_batchnorm(module: nn.Module, gen: torch.Generator) -> None:
    # Fresh BN layers have mean 0 / var 1, which would leave the folding arithmetic untested.
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def resnet(seed: int = 0, **kwargs: object) -> ResNet:
    """A ResNet in eval mode with seeded weights (BatchNorm statistics randomized too)."""
    torch.manual_seed(seed)
    model = ResNet(**kwargs)  # type: ignore[arg-type]
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def bert(seed: int = 0, cfg: BertConfig | None = None) -> BertEncoder:
    """A BERT-style encoder in eval mode with seeded weights."""
    torch.manual_seed(seed)
    return BertEncoder(cfg).eval()


def resnet_inputs(seed: int = 0, batch: int = 2, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}


def bert_inputs(
    seed: int = 0, batch: int = 2, seq: int = 8, cfg: BertConfig | None = None
) -> dict[str, np.ndarray]:
    """Token ids, an attention mask with padding on the second sequence, token types."""
    cfg = cfg or BertConfig()
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1:
        mask[1, seq // 2 :] = 0
    types = np.zeros((batch, seq), np.int64)
    types[:, seq // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def export(
    module: nn.Module,
    inputs: dict[str, np.ndarray],
    path: str | Path,
    output_names: Sequence[str],
    *,
    dynamo: bool = True,
) -> str:
    """Export ``module`` (eval mode, fixed shapes) to ``path``; returns the exporter used.

    The dynamo exporter (torch's default; needs onnxscript) is tried first; if it fails the
    TorchScript exporter is used instead, so a broken onnxscript does not hide nerve's results.
    """
    module.eval()
    args = tuple(torch.from_numpy(a) for a in inputs.values())
    common = {"input_names": list(inputs), "output_names": list(output_names)}
    if dynamo:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), dynamo=True, **common)
            return "dynamo"
        except Exception as exc:  # the fallback below is the point; report why
            warnings.warn(f"dynamo export failed ({exc!r}); using dynamo=False", stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, **common)
    return "torchscript"


def run_torch(module: nn.Module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The module's outputs on ``inputs`` as numpy arrays (a tuple output gives several)."""
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in inputs.values()))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]
