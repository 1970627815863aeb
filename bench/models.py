"""Benchmark models with random weights, written by hand in PyTorch and exported to ONNX.

Nothing is downloaded: each network is built from its published architecture with seeded
random weights (BatchNorm statistics randomised too), exported once, and cached as
``bench/models/<name>.onnx`` (git-ignored). Shapes are fixed (batch 1).

* ``resnet50``    — ResNet-50 v1.5 (bottlenecks [3, 4, 6, 3]), 1x3x224x224 -> 1000 logits.
* ``mobilenetv2`` — MobileNetV2 (width 1.0), 1x3x224x224 -> 1000 logits.
* ``bert``        — BERT-base encoder (12 layers, 768 wide, 12 heads), sequence 128.
* ``gpt2``        — GPT-2 124M prefill of 128 tokens -> logits over the 50257-token vocabulary.
* ``mlp``         — MLP 784-1024-1024-10 with ReLU.

    python bench/models.py [names...]     # export (or find cached) models, print their paths
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class BenchModel:
    name: str
    title: str
    make_module: Callable[[], object]  # -> torch.nn.Module in eval mode
    make_inputs: Callable[[], dict[str, np.ndarray]]
    outputs: tuple[str, ...]

    @property
    def path(self) -> Path:
        return MODELS_DIR / f"{self.name}.onnx"


# ---- networks (torch is imported lazily: `python bench/peers.py --help` works without it) --


def _torch():  # type: ignore[no-untyped-def]
    import torch

    return torch


def _randomize_batchnorm(module: object, seed: int) -> None:
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():  # type: ignore[attr-defined]
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def resnet50() -> object:
    torch = _torch()
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )  # fmt: skip
            layers, cin = [], 64
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * 4
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.layers(self.stem(x))
            return self.fc(torch.flatten(torch.mean(y, dim=(2, 3)), 1))

    torch.manual_seed(0)
    model = ResNet50()
    _randomize_batchnorm(model, 1)
    return model.eval()


def mobilenetv2() -> object:
    torch = _torch()
    nn = torch.nn

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True):  # type: ignore[no-untyped-def]
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]  # fmt: skip
        if act:
            layers.append(nn.ReLU6())
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn(cin, hidden, 1, 1)]
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                       conv_bn(hidden, cout, 1, 1, act=False)]  # fmt: skip
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.body(x)
            return x + y if self.residual else y

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks, cin = [conv_bn(3, 32, 3, 2)], 32
            settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
            for t, c, n, s in settings:
                for i in range(n):
                    blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            blocks.append(conv_bn(cin, 1280, 1, 1))
            self.features = nn.Sequential(*blocks)
            self.classifier = nn.Linear(1280, 1000)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.features(x)
            return self.classifier(torch.flatten(torch.mean(y, dim=(2, 3)), 1))

    torch.manual_seed(0)
    model = MobileNetV2()
    _randomize_batchnorm(model, 2)
    return model.eval()


def _transformer_block(torch, dim: int, heads: int, hidden: int, causal: bool, pre_norm: bool,
                       gelu_tanh: bool, seq: int):  # type: ignore[no-untyped-def]  # fmt: skip
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.ln1 = nn.LayerNorm(dim, eps=1e-5 if pre_norm else 1e-12)
            self.ln2 = nn.LayerNorm(dim, eps=1e-5 if pre_norm else 1e-12)
            self.up = nn.Linear(dim, hidden)
            self.down = nn.Linear(hidden, dim)
            self.act = nn.GELU(approximate="tanh" if gelu_tanh else "none")
            if causal:
                mask = torch.full((seq, seq), float("-inf")).triu(1)
                self.register_buffer("mask", mask.view(1, 1, seq, seq), persistent=False)

        def attention(self, x, bias):  # type: ignore[no-untyped-def]
            b, s, _ = x.shape
            q, k, v = self.qkv(x).split(dim, dim=-1)
            q, k, v = (t.view(b, s, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
            scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(dim // heads))
            scores = scores + (self.mask if causal else bias)
            out = torch.softmax(scores, dim=-1) @ v
            return self.proj(out.transpose(1, 2).reshape(b, s, dim))

        def forward(self, x, bias):  # type: ignore[no-untyped-def]
            if pre_norm:
                x = x + self.attention(self.ln1(x), bias)
                return x + self.down(self.act(self.up(self.ln2(x))))
            x = self.ln1(x + self.attention(x, bias))
            return self.ln2(x + self.down(self.act(self.up(x))))

    return Block()


BERT_SEQ = 128
GPT2_SEQ = 128


def bert_base() -> object:
    torch = _torch()
    nn = torch.nn
    dim, layers, heads, vocab = 768, 12, 12, 30522

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = nn.Embedding(vocab, dim)
            self.positions = nn.Embedding(512, dim)
            self.types = nn.Embedding(2, dim)
            self.norm = nn.LayerNorm(dim, eps=1e-12)
            self.blocks = nn.ModuleList(
                _transformer_block(torch, dim, heads, 4 * dim, False, False, False, BERT_SEQ)
                for _ in range(layers)
            )

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = (
                self.words(input_ids)
                + self.positions(pos)
                + self.types(torch.zeros_like(input_ids))
            )
            x = self.norm(x)
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for block in self.blocks:
                x = block(x, bias)
            return x

    torch.manual_seed(0)
    model = Bert()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.eval()


def gpt2() -> object:
    torch = _torch()
    nn = torch.nn
    dim, layers, heads, vocab = 768, 12, 12, 50257

    class GPT2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab, dim)
            self.wpe = nn.Embedding(1024, dim)
            self.blocks = nn.ModuleList(
                _transformer_block(torch, dim, heads, 4 * dim, True, True, True, GPT2_SEQ)
                for _ in range(layers)
            )
            self.ln_f = nn.LayerNorm(dim)

        def forward(self, input_ids):  # type: ignore[no-untyped-def]
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.wte(input_ids) + self.wpe(pos)
            for block in self.blocks:
                x = block(x, None)
            return self.ln_f(x) @ self.wte.weight.t()  # tied LM head

    torch.manual_seed(0)
    model = GPT2()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.eval()


def mlp() -> object:
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    return model.eval()


def _image() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}


def _tokens(vocab: int, seq: int, mask: bool) -> Callable[[], dict[str, np.ndarray]]:
    def make() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        feeds = {"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64)}
        if mask:
            feeds["attention_mask"] = np.ones((1, seq), np.int64)
        return feeds

    return make


MODELS: dict[str, BenchModel] = {
    m.name: m
    for m in (
        BenchModel("resnet50", "ResNet-50", resnet50, _image, ("logits",)),
        BenchModel("mobilenetv2", "MobileNetV2", mobilenetv2, _image, ("logits",)),
        BenchModel(
            "bert", "BERT-base seq128", bert_base, _tokens(30522, BERT_SEQ, True), ("hidden",)
        ),
        BenchModel(
            "gpt2", "GPT-2 124M prefill128", gpt2, _tokens(50257, GPT2_SEQ, False), ("logits",)
        ),
        BenchModel(
            "mlp",
            "MLP 784-1024-1024-10",
            mlp,
            lambda: {"x": np.random.default_rng(0).standard_normal((1, 784), np.float32)},
            ("logits",),
        ),
    )
}


def export(model: BenchModel, force: bool = False) -> Path:
    """The model's ONNX file, exported on first use (and cached)."""
    path = model.path
    if path.is_file() and not force:
        return path
    torch = _torch()
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    module = model.make_module()
    feeds = model.make_inputs()
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(tmp), input_names=list(feeds), output_names=list(model.outputs),
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or list(MODELS):
        print(export(MODELS[name]))
