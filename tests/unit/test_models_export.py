"""Export of tiny, randomly initialised BERT and RoBERTa classifiers built here (no download), with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from models.export import ExportError, GraphSpec, check_parity, export_hf_classifier
from models.manifest import ManifestError, load_manifest, verified_variant_path
from models.runtime import OnnxClassifier, encode

CORPUS = [
    "I love this phone, the battery lasts all day",
    "worst delivery ever, the parcel arrived broken",
    "does anyone know when the store opens on sunday?",
    "cancelling my subscription, the price went up again",
    "free gift card click the link in bio",
    "the new update is fine i guess",
    "great service and friendly staff, thank you",
    "my order is late and nobody answers the phone",
]
TEXTS = [*CORPUS, "an unseen sentence with words the vocabulary has never met", "ok", ""]


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def _roberta_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))
    )
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],
    )


def _tiny(hidden: int = 32) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = _bert_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=64,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
        pad_token_id=tokenizer.pad_token_id,
        **_tiny(),
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    tokenizer = _roberta_tokenizer()
    pad = tokenizer.pad_token_id
    assert pad == 1  # RoBERTa convention; the manifest must carry it
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=64 + pad + 1,
        type_vocab_size=1,
        pad_token_id=pad,
        bos_token_id=0,
        eos_token_id=2,
        problem_type="multi_label_classification",
        id2label={0: "toxic", 1: "spam", 2: "off_topic", 3: "question"},
        label2id={"toxic": 0, "spam": 1, "off_topic": 2, "question": 3},
        **_tiny(),
    )
    path = tmp_path_factory.mktemp("tiny-roberta")
    RobertaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _torch_logits(source: Path, texts: list[str], pad_id: int, out: Path) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    rows = []
    tokenizer = OnnxClassifier.from_dir(out, "fp32").tokenizer
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all on the reference side
            input_ids, attention_mask = encode(tokenizer, [text])
            rows.append(
                model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
                .logits[0]
                .numpy()
            )
    return np.stack(rows)


def _assert_dynamic_opset17(path: Path) -> None:
    model = onnx.load(str(path))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for dims in inputs.values():
        assert all(dims), f"batch and sequence axes must be symbolic, got {dims}"


def test_export_tiny_bert_with_parity(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "bert-onnx"
    manifest = export_hf_classifier(str(tiny_bert), out, ["fp32", "fp16", "int8"])
    assert manifest == load_manifest(out)
    assert [h.name for h in manifest.heads] == ["sentiment"]
    head = manifest.heads[0]
    assert (head.output, head.activation, head.labels) == ("logits", "softmax", ["negative", "neutral", "positive"])
    assert manifest.source.kind == "exported" and manifest.pad_token_id == 0
    assert set(manifest.variants) == {"fp32", "fp16", "int8"}
    fp32 = manifest.variants["fp32"].parity
    assert fp32 is not None and fp32.max_abs_diff < 1e-3 and fp32.top_label_agreement == 1.0
    # Without a GPU the fused graph behind fp16 is still checked, at fp32, on the CPU.
    export_notes = manifest.metrics["export"]
    assert isinstance(export_notes, dict)
    assert export_notes["fp16_fused_operators"]["Attention"] == 2
    assert export_notes["int8_fp32_matmuls"] == 2  # the two FFN down-projections
    assert export_notes["fp16_fused_graph_parity_cpu"]["max_abs_diff"] < 1e-3
    for name in manifest.variants:
        verified_variant_path(out, manifest, name)
    _assert_dynamic_opset17(out / manifest.variants["fp32"].file)
    assert (out / "tokenizer.json").is_file()

    # Batched (padded) ONNX inference matches unpadded PyTorch, row by row.
    classifier = OnnxClassifier.from_dir(out, "fp32")
    onnx_logits = classifier.raw(TEXTS)["logits"]
    np.testing.assert_allclose(onnx_logits, _torch_logits(tiny_bert, TEXTS, 0, out), atol=1e-4)
    predictions = classifier.classify(TEXTS)
    assert len(predictions) == len(TEXTS)
    assert all(p.heads["sentiment"].labels[0] in head.labels for p in predictions)


def test_export_tiny_roberta_multilabel_with_parity(tiny_roberta: Path, tmp_path: Path) -> None:
    out = tmp_path / "roberta-onnx"
    manifest = export_hf_classifier(str(tiny_roberta), out, ["fp32", "int8"])
    head = manifest.heads[0]
    assert (head.name, head.activation) == ("classification", "sigmoid")
    assert head.labels == ["toxic", "spam", "off_topic", "question"]
    assert manifest.pad_token_id == 1
    assert manifest.max_seq_len == 64
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.variants["int8"].parity is not None
    assert manifest.variants["int8"].parity.top_label_agreement >= 0.9
    _assert_dynamic_opset17(out / manifest.variants["fp32"].file)

    classifier = OnnxClassifier.from_dir(out, "fp32")
    np.testing.assert_allclose(classifier.raw(TEXTS)["logits"], _torch_logits(tiny_roberta, TEXTS, 1, out), atol=1e-4)
    # A 200-word post is truncated to max_seq_len, not rejected.
    assert len(classifier.classify(["word " * 200])) == 1


def test_parity_gate_fails_loudly(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "bert-onnx"
    manifest = export_hf_classifier(str(tiny_bert), out, ["fp32"])
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()

    def drifted(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return (logits + torch.tensor([0.0, 0.0, 0.01]),)

    spec = GraphSpec(outputs=["logits"], widths=[3], primary="logits", num_heads=2, hidden_size=32)
    with pytest.raises(ExportError, match="parity failed"):
        check_parity(drifted, out / "model.fp32.onnx", spec, out / "tokenizer.json", manifest.max_seq_len, 0, "fp32")


def test_tampered_variant_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "bert-onnx"
    manifest = export_hf_classifier(str(tiny_bert), out, ["fp32", "int8"])
    path = out / manifest.variants["int8"].file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        verified_variant_path(out, manifest, "int8")
    with pytest.raises(ManifestError, match="sha256"):
        OnnxClassifier.from_dir(out, "int8")
    # The untouched variant still loads.
    assert OnnxClassifier.from_dir(out, "fp32").classify(["fine"])
    with pytest.raises(ManifestError, match="no variant"):
        OnnxClassifier.from_dir(out, "fp16")
