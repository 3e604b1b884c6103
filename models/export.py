"""PyTorch -> ONNX: graph export, fp16 / int8 variants, and the parity check that gates them.

Imports torch and transformers: training extra only.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import torch
from torch import nn

from models.manifest import (
    Activation,
    Head,
    Manifest,
    Parity,
    Source,
    Variant,
    sha256_of,
    write_manifest,
)
from models.runtime import encode
from stream.backends.ort import OrtBackend
from stream.tokenize import PostTokenizer

OPSET = 17
INPUTS = ["input_ids", "attention_mask"]

# A fixed, varied sample for parity: short and long, plain and noisy, several languages.
PARITY_TEXTS: tuple[str, ...] = (
    "I love this phone, the camera is amazing!",
    "Worst customer service ever. Three hours on hold and nobody answered.",
    "The parcel arrived on Tuesday.",
    "is the app down for anyone else??",
    "meh. it's ok I guess",
    "Absolutely furious that my flight got cancelled AGAIN #neveragain",
    "Thinking about switching to another provider when my contract ends",
    "FREE GIFT CARD!!! click the link in bio to claim 💰💰",
    "Does anyone know if the store opens early on Saturdays?",
    "Not bad at all, better than I expected honestly :)",
    "The update broke everything. Uninstalling.",
    "Just ordered the new headphones, can't wait for them to arrive",
    "Le service client est vraiment excellent, merci !",
    "Das Essen war kalt und die Lieferung kam zu spät.",
    "¿Alguien sabe cuándo abre la tienda nueva?",
    "ok",
    "",
    "This is a much longer post that goes on and on about a product, describing how the battery lasts "
    "all day, the screen is bright enough to read outdoors, the speakers are tinny but acceptable, and "
    "the price was fair for what you get, although the packaging was excessive and the manual useless.",
    "@brand why was I charged twice for the same order? please fix this",
    "lol what a day 😂😂",
    "I can't recommend them enough, the staff went above and beyond",
    "Price went up again and nothing improved. Cancelling.",
    "New blog post: ten tips for better sleep",
    "Meh, the sequel was worse than the original but the soundtrack was great",
)

# (max |logit diff| allowed, minimum top-label agreement) per variant.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1.0),
    "fp16": (5e-2, 0.99),
    "int8": (1.0, 0.9),
}


class ExportError(RuntimeError):
    """The export produced a graph that does not match its PyTorch source."""


class GraphSpec(msgspec.Struct, frozen=True):
    outputs: list[str]
    # Fixed width of each output's second axis (outputs are [batch, width]).
    widths: list[int]
    # The output whose argmax is compared for top-label agreement.
    primary: str
    num_heads: int
    hidden_size: int


Reference = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


def export_graph(module: nn.Module, spec: GraphSpec, tokenizer: PostTokenizer, path: Path) -> None:
    """TorchScript-based export at opset 17 with dynamic batch and sequence axes.

    The torch.export-based exporter emits opset 18 graphs that onnxruntime's transformer optimizer cannot
    fuse; the TorchScript exporter with eager attention gives the pattern the fused-attention pass knows.
    """
    module.eval()
    # Two lengths, so the traced graph includes the padding path of the attention mask.
    ids, mask = encode(tokenizer, ["a short post", "a somewhat longer post, so that the batch needs padding"])
    input_ids, attention_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    dynamic_axes.update({name: {0: "batch"} for name in spec.outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (input_ids, attention_mask),
            str(path),
            input_names=INPUTS,
            output_names=spec.outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    # Shape inference leaves symbolic names on fixed head widths; pin them so consumers can rely on them.
    for output in model.graph.output:
        width = spec.widths[spec.outputs.index(output.name)]
        output.type.tensor_type.shape.dim[1].ClearField("dim_param")
        output.type.tensor_type.shape.dim[1].dim_value = width
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def make_fp16(fp32_path: Path, out_path: Path, spec: GraphSpec, fused_fp32_path: Path) -> dict[str, int]:
    """Fuse attention/LayerNorm/GELU for GPU execution, then convert weights and math to float16.

    Inputs and outputs keep their types (int64 ids, float32 scores) so callers need not care. The fused
    graph is also saved in fp32 (fused_fp32_path) so the fusion itself can be parity-checked on a CPU.
    """
    from onnxruntime.transformers import optimizer

    optimised = optimizer.optimize_model(
        str(fp32_path),
        model_type="bert",
        num_heads=spec.num_heads,
        hidden_size=spec.hidden_size,
        opt_level=0,
        use_gpu=True,
    )
    fused = {name: count for name, count in optimised.get_fused_operator_statistics().items() if count}
    optimised.save_model_to_file(str(fused_fp32_path))
    optimised.convert_float_to_float16(keep_io_types=True)
    optimised.save_model_to_file(str(out_path))
    onnx.checker.check_model(onnx.load(str(out_path)), full_check=True)
    return fused


@torch.no_grad()
def smoothed_copy(
    module: nn.Module, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]], alpha: float = 0.75
) -> nn.Module:
    """A copy of module whose Linear layers see per-channel rescaled inputs (SmoothQuant, Xiao et al. 2022).

    Dynamic int8 quantises each activation tensor with one scale. Transformer activations carry a few
    channels up to 20x larger than the rest (MiniLM's FFN inputs reach 28 where the median channel peaks
    near 1.7), so that one scale leaves the ordinary channels a handful of levels. For every Linear we
    divide input channel j by s_j = max|x_j|^alpha / max|w_j|^(1-alpha) and multiply weight column j by s_j:
    the function is unchanged in fp32, the quantiser sees flat activations, and the weight columns absorb
    the range (they are quantised per output channel anyway). On MiniLM, alpha 0.75 cut the int8 embedding
    error against fp32 from 1 - cos 0.0097 to 0.0035 (alpha 0.5: 0.019, 0.25: 0.20, 1.0: 0.0050).
    """
    import copy

    smoothed = copy.deepcopy(module).eval()
    linears = {name: layer for name, layer in smoothed.named_modules() if isinstance(layer, nn.Linear)}
    peaks: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(_layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            peak = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak

        return record

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in linears.items()]
    for input_ids, attention_mask in calibration:
        smoothed(input_ids, attention_mask)
    for handle in handles:
        handle.remove()
    for name, layer in linears.items():
        if name not in peaks:
            continue
        weight_peak = layer.weight.abs().amax(dim=0).clamp(min=1e-5)
        scale = (peaks[name].clamp(min=1e-5) ** alpha / weight_peak ** (1 - alpha)).clamp(min=1e-5)
        layer.weight.mul_(scale)
        inverse = (1.0 / scale).contiguous()
        layer.register_forward_pre_hook(lambda _layer, inputs, inverse=inverse: (inputs[0] * inverse,))
    return smoothed


def down_projections(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose constant weight narrows its input (the FFN's 4x-wide activation back to hidden).

    Their input is the GELU output, the most skewed activation in the network; quantising it with one
    per-tensor int8 scale is where most of the remaining int8 error comes from.
    """
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(shapes.get(node.input[1], [])) == 2
        and shapes[node.input[1]][0] >= 2 * shapes[node.input[1]][1]
    ]


def make_int8(fp32_path: Path, out_path: Path) -> int:
    """Dynamic int8 quantisation for CPU (weights ahead of time, activations per batch at run time).

    Every MatMul is int8 except the FFN down-projections, which stay fp32: on MiniLM that costs 10 MB and a
    third of the encoder's MatMul work, and cuts the embedding error against fp32 (1 - cos) from 0.0035
    to 0.0011 on top of the input smoothing. The embedding tables stay fp32 too: quantize_dynamic would
    store them as per-tensor uint8 and dequantize the whole word table on every run. Keeping them costs
    36 MB of file and no compute; on 3,000 rated snippets the model never trained on it halved the
    embedding error again and took sentiment top-label agreement with fp32 from 98.8 % to 99.5 %.
    Weights are 7-bit ([-64, 64], `reduce_range`): on x86 CPUs without VNNI, MLAS adds each adjacent pair
    of uint8 x int8 products into a saturating int16 (VPMADDUBSW), and full-range weights overflowed it
    (models/saturation.py). 255 * (64 + 64) = 32640 fits, so the same file gives the same labels on AVX2,
    AVX-512, VNNI and AMX machines. Returns how many MatMuls were left in fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_suffix(".prep.onnx")
    # Symbolic shape inference cannot follow the exported attention-mask arithmetic; ONNX shape inference
    # plus graph optimisation is the part of the pre-processing that matters for MatMul quantisation.
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    keep_fp32 = down_projections(onnx.load(str(prepared)))
    quantize_dynamic(
        str(prepared),
        str(out_path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep_fp32,
    )
    prepared.unlink()
    onnx.checker.check_model(onnx.load(str(out_path)))
    return len(keep_fp32)


@torch.no_grad()
def check_parity(
    reference: Reference,
    onnx_path: Path,
    spec: GraphSpec,
    tokenizer_path: Path,
    max_seq_len: int,
    pad_id: int,
    variant: str,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    texts: Sequence[str] = PARITY_TEXTS,
) -> Parity:
    """Run the fixed sample through PyTorch and ONNX Runtime; raise if the variant is off tolerance."""
    tokenizer = PostTokenizer(tokenizer_path, max_seq_len, pad_id)
    runner = OrtBackend(onnx_path, list(providers), variant)
    # Max |diff| of the primary (classification) logits is what is recorded and gated; fp32 must
    # also reproduce every other output (behaviour logits, embedding) to within its tolerance.
    primary_diff = 0.0
    other_diff = 0.0
    agree = 0
    primary = spec.outputs.index(spec.primary)
    for start in range(0, len(texts), 8):
        input_ids, attention_mask = encode(tokenizer, texts[start : start + 8])
        expected = [t.float().numpy() for t in reference(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))]
        actual = runner.run(input_ids, attention_mask)
        for index, (name, want) in enumerate(zip(spec.outputs, expected, strict=True)):
            diff = float(np.max(np.abs(actual[name] - want)))
            if index == primary:
                primary_diff = max(primary_diff, diff)
            else:
                other_diff = max(other_diff, diff)
        agree += int(np.sum(actual[spec.primary].argmax(-1) == expected[primary].argmax(-1)))
    checked_on = "gpu" if any("CUDA" in p or "Tensorrt" in p for p in providers) else "cpu"
    parity = Parity(
        samples=len(texts),
        max_abs_diff=round(primary_diff, 6),
        top_label_agreement=round(agree / len(texts), 4),
        checked_on=checked_on,
    )
    limit, minimum = TOLERANCES[variant]
    if variant == "fp32" and other_diff > limit:
        raise ExportError(f"fp32 parity failed for {onnx_path.name}: secondary outputs differ by {other_diff:g}")
    if parity.max_abs_diff > limit or parity.top_label_agreement < minimum:
        raise ExportError(
            f"{variant} parity failed for {onnx_path.name}: max |{spec.primary} diff| {parity.max_abs_diff} "
            f"(limit {limit}), top-label agreement {parity.top_label_agreement} (minimum {minimum})"
        )
    return parity


def cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def check_fp16_loads(path: Path) -> None:
    """Without a GPU the fp16 graph can only be checked for well-formedness and that a session builds."""
    import onnxruntime

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    try:
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ExportError(f"fp16 graph {path} does not load in onnxruntime: {error}") from error


def build_variants(
    module: nn.Module,
    spec: GraphSpec,
    out_dir: Path,
    tokenizer_path: Path,
    max_seq_len: int,
    pad_id: int,
    variants: Sequence[str],
    on_stage: Callable[[str], None] = lambda _stage: None,
    calibration_texts: Sequence[str] = PARITY_TEXTS,
) -> tuple[dict[str, Variant], dict[str, object]]:
    """Export fp32 and derive the requested variants, each gated by parity. Returns (variants, export notes)."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def reference(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Sequence[torch.Tensor]:
        result = module(input_ids, attention_mask)
        return result if isinstance(result, tuple) else (result,)

    def parity_of(path: Path, variant: str, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Parity:
        return check_parity(reference, path, spec, tokenizer_path, max_seq_len, pad_id, variant, providers)

    entries: dict[str, Variant] = {}
    notes: dict[str, object] = {"opset": OPSET}
    fp32 = out_dir / "model.fp32.onnx"
    on_stage("export fp32")
    export_graph(module, spec, PostTokenizer(tokenizer_path, max_seq_len, pad_id), fp32)
    on_stage("parity fp32")
    entries["fp32"] = Variant(fp32.name, sha256_of(fp32), "cpu", parity_of(fp32, "fp32"))
    if "fp16" in variants:
        on_stage("optimise + fp16")
        fp16 = out_dir / "model.fp16.onnx"
        fused = out_dir / "model.fused-fp32.onnx"
        notes["fp16_fused_operators"] = make_fp16(fp32, fp16, spec, fused)
        # The fused operators (Attention with its mask handling, SkipLayerNorm, BiasGelu) run on CPU
        # too: checking them at fp32 isolates fusion mistakes from float16 rounding.
        notes["fp16_fused_graph_parity_cpu"] = msgspec.to_builtins(parity_of(fused, "fp32"))
        fused.unlink()
        if cuda_available():
            parity: Parity | None = parity_of(fp16, "fp16", ("CUDAExecutionProvider",))
        else:
            check_fp16_loads(fp16)
            parity = None
            notes["fp16_parity"] = "not run: no CUDA here; graph checked with onnx.checker and loaded on CPU"
        entries["fp16"] = Variant(fp16.name, sha256_of(fp16), "gpu", parity)
    if "int8" in variants:
        on_stage("int8 quantisation")
        int8 = out_dir / "model.int8.onnx"
        smoothed = out_dir / "model.smoothed.onnx"
        tokenizer = PostTokenizer(tokenizer_path, max_seq_len, pad_id)
        batches = [encode(tokenizer, calibration_texts[i : i + 32]) for i in range(0, len(calibration_texts), 32)]
        calibration = [(torch.from_numpy(ids), torch.from_numpy(mask)) for ids, mask in batches]
        export_graph(smoothed_copy(module, calibration), spec, tokenizer, smoothed)
        notes["int8_fp32_matmuls"] = make_int8(smoothed, int8)
        smoothed.unlink()
        on_stage("parity int8")
        entries["int8"] = Variant(int8.name, sha256_of(int8), "cpu", parity_of(int8, "int8"))
    for leftover in out_dir.glob("*.onnx.data"):
        leftover.unlink()
    return entries, notes


# ---------------------------------------------------------------------------------------------
# Any Hugging Face sequence classifier


SENTIMENT_WORDS = {"negative", "neutral", "positive", "neg", "neu", "pos"}


class SequenceClassifierGraph(nn.Module):
    """(input_ids, attention_mask) -> logits; token_type_ids, where the family has them, are zeros inside."""

    def __init__(self, model: nn.Module, takes_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.takes_token_types = takes_token_types

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra: dict[str, torch.Tensor] = {}
        if self.takes_token_types:
            extra["token_type_ids"] = torch.zeros_like(input_ids)
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits


def head_name(labels: Sequence[str]) -> str:
    words = {label.lower().strip() for label in labels}
    return "sentiment" if len(words & SENTIMENT_WORDS) >= 2 else "classification"


def _config_int(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ExportError(f"config has none of {names}")


def export_hf_classifier(
    source: str,
    out_dir: Path,
    variants: Sequence[str] = ("fp32", "fp16", "int8"),
    max_seq_len: int | None = None,
    on_stage: Callable[[str], None] = lambda _stage: None,
) -> Manifest:
    """Export an AutoModelForSequenceClassification checkpoint (hub id or local folder) with a manifest."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    on_stage("load checkpoint")
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{source}: needs a fast tokenizer (tokenizer.json) for the torch-free runtime")
    # Eager attention exports to the pattern onnxruntime's fused-attention pass recognises.
    model = AutoModelForSequenceClassification.from_pretrained(source, attn_implementation="eager").eval()
    id2label: Mapping[int, str] = config.id2label
    labels = [str(id2label[i]) for i in range(len(id2label))]
    activation: Activation = (
        "sigmoid" if getattr(config, "problem_type", None) == "multi_label_classification" else "softmax"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    position_limit = _config_int(config, "max_position_embeddings", "n_positions")
    # RoBERTa-style models offset positions by padding_idx + 1.
    usable = position_limit - (pad_id + 1 if config.model_type in {"roberta", "xlm-roberta", "camembert"} else 0)
    seq_len = min(max_seq_len or 512, usable, int(tokenizer.model_max_length) if tokenizer.model_max_length else usable)
    takes_token_types = "token_type_ids" in tokenizer.model_input_names and config.model_type != "distilbert"
    graph = SequenceClassifierGraph(model, takes_token_types).eval()
    spec = GraphSpec(
        outputs=["logits"],
        widths=[len(labels)],
        primary="logits",
        num_heads=_config_int(config, "num_attention_heads", "n_heads"),
        hidden_size=_config_int(config, "hidden_size", "dim"),
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tokenizer_file = out_dir / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(tokenizer_file))
    entries, notes = build_variants(graph, spec, out_dir, tokenizer_file, seq_len, pad_id, variants, on_stage)
    manifest = Manifest(
        name=Path(source).name if Path(source).exists() else source.replace("/", "--"),
        version=str(getattr(config, "_commit_hash", None) or "local")[:12],
        max_seq_len=seq_len,
        tokenizer=tokenizer_file.name,
        tokenizer_sha256=sha256_of(tokenizer_file),
        heads=[Head(name=head_name(labels), output="logits", activation=activation, labels=labels)],
        variants=entries,
        source=Source(kind="exported", location=source),
        pad_token_id=pad_id,
        metrics={"export": notes},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_manifest(out_dir, manifest)
    return manifest
