"""The multilingual model's wide half: sentiment logits linear in a post's hashed token n-grams.

The fine-tuned encoder and an n-gram logistic regression go wrong on different posts: the encoder reads
meaning, the n-gram model remembers which exact phrases the training reviews used for which label.
Adding the n-gram model's logits to the encoder's (wide & deep, Cheng et al. 2016) keeps both. It is
computed inside the served graph from input_ids (one Gather per n-gram, no Python per post), so the
graph contract, the worker and its tokenization stay as they are.

Imports torch: training extra only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models.runtime import encode
from models.train import MultiTaskModel
from stream.tokenize import PostTokenizer

if TYPE_CHECKING:
    from models.multilingual import NgramConfig


def count_scaled(present: torch.Tensor) -> torch.Tensor:
    """Each present n-gram's weight: 1 / sqrt(the post's n-gram count); the served graph and the fit share it."""
    return present * torch.rsqrt(present.sum(dim=1, keepdim=True).clamp(min=1.0))


class TokenNgrams(nn.Module):
    """Logits = sum of a learned row per n-gram present, over sqrt(the post's n-gram count), plus a bias.

    The 1/sqrt(count) scaling is an L2-normalised binary bag of n-grams when no n-gram repeats, so short
    and long posts sit on one scale, as in TF-IDF's normalisation.
    """

    def __init__(self, vocabulary_size: int, config: NgramConfig, classes: int) -> None:
        super().__init__()
        if config.buckets <= vocabulary_size:
            raise ValueError(f"{config.buckets} buckets leave no room past a {vocabulary_size}-token vocabulary")
        self.vocabulary_size = vocabulary_size
        self.orders = config.orders
        self.buckets = config.buckets
        self.table = nn.Embedding(config.buckets, classes)
        self.bias = nn.Parameter(torch.zeros(classes))
        nn.init.zeros_(self.table.weight)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket of every n-gram at every start position, 1 where the n-gram lies inside the post)."""
        hashed = self.buckets - self.vocabulary_size
        buckets, present = [input_ids], [attention_mask]
        gram, inside = input_ids % hashed, attention_mask
        for n in range(2, self.orders + 1):
            # Reduced at every step, so int64 never overflows: hashed * vocabulary_size < 2**63.
            gram = (gram[:, :-1] * self.vocabulary_size + input_ids[:, n - 1 :]) % hashed
            inside = inside[:, :-1] * attention_mask[:, n - 1 :]
            buckets.append(gram + self.vocabulary_size)
            present.append(inside)
        return torch.cat(buckets, dim=1), torch.cat(present, dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        buckets, present = self.features(input_ids, attention_mask)
        weights = count_scaled(present.to(self.table.weight.dtype))
        logits: torch.Tensor = (self.table(buckets) * weights.unsqueeze(-1)).sum(dim=1) + self.bias
        return logits

    @torch.no_grad()
    def design_matrix(self, tokenizer: PostTokenizer, texts: Sequence[str]) -> Any:
        """The sparse matrix whose product with the table is forward()'s logits (less the bias)."""
        import scipy.sparse

        rows = []
        for start in range(0, len(texts), 256):
            input_ids, attention_mask = (torch.from_numpy(a) for a in encode(tokenizer, texts[start : start + 256]))
            buckets, present = self.features(input_ids, attention_mask)
            values = count_scaled(present.double())
            keep = present.bool().numpy()
            row_of = np.broadcast_to(np.arange(len(keep))[:, None], keep.shape)[keep]
            rows.append(
                scipy.sparse.csr_matrix(
                    (values.numpy()[keep], (row_of, buckets.numpy()[keep])), shape=(len(keep), self.buckets)
                )
            )
        matrix = scipy.sparse.vstack(rows).tocsr()
        matrix.sum_duplicates()
        return matrix

    @torch.no_grad()
    def fit(
        self, tokenizer: PostTokenizer, texts: Sequence[str], labels: Sequence[int], config: NgramConfig
    ) -> dict[str, Any]:
        """Logistic regression (balanced class weights) on the design matrix, copied into the table and scaled."""
        from sklearn.linear_model import LogisticRegression

        matrix = self.design_matrix(tokenizer, texts)
        model = LogisticRegression(C=config.c, class_weight="balanced", max_iter=5000).fit(matrix, list(labels))
        coefficients = np.zeros((len(self.bias), self.buckets))
        intercept = np.zeros(len(self.bias))
        # Classes no row has (a corpus without neutral) keep zero weight.
        # Two classes: sklearn fits one row, the second class's logit against the first's.
        positive = model.classes_ if len(model.classes_) > 2 else model.classes_[1:]
        coefficients[positive] = model.coef_
        intercept[positive] = model.intercept_
        self.table.weight.copy_(torch.from_numpy(config.weight * coefficients.T))
        self.bias.copy_(torch.from_numpy(config.weight * intercept))
        return {"rows": len(texts), "features_used": int(np.count_nonzero(np.any(coefficients, axis=0)))}


class WideAndDeepModel(MultiTaskModel):
    """MultiTaskModel whose sentiment logits add the token n-gram model's to the encoder head's."""

    def __init__(self, encoder: Any, ngrams: NgramConfig, classes: int) -> None:
        super().__init__(encoder)
        self.ngrams = TokenNgrams(int(encoder.config.vocab_size), ngrams, classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sentiment, behaviour, embedding = super().forward(input_ids, attention_mask)
        return sentiment + self.ngrams(input_ids, attention_mask), behaviour, embedding
