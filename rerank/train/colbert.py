"""A ColBERT student in training (``rerank train distill --student colbert``): an encoder and a
linear projection trained so that MaxSim over token vectors reproduces a teacher's margins
(Margin-MSE, Hofstätter et al.: the cross-architecture distillation that names ColBERT among
its students).

Queries and passages are encoded exactly as :class:`~rerank.encoders.tokens.ColBERTEncoder` does
at inference (markers, ``[MASK]`` query augmentation, projection, normalization, punctuation
left out of passages), and the saved folder is a ColBERT checkpoint in the Stanford layout
(``bert.*`` and ``linear.weight``, ``HF_ColBERT``, ``artifact.metadata``), which the ColBERT stage
and :class:`~rerank.retrieve.tokens.TokenEmbeddingIndex` load as they load a published one.
"""
from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.models import MINILM_L6
from rerank.score.colbert import ColBERT
from rerank.train.students import TrainableModel

if TYPE_CHECKING:
    import torch

    from rerank.pipeline import Stage


def _network(body, dim: int):
    import torch  # deferred: torch takes long to import

    class ColbertNetwork(torch.nn.Module):
        """The encoder and its projection; ``forward`` gives normalized token vectors."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = body
            self.linear = torch.nn.Linear(body.config.hidden_size, dim, bias=False)
            self.config = body.config

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return torch.nn.functional.normalize(self.linear(hidden).float(), p=2, dim=-1)

    return ColbertNetwork()


class ColbertModel(TrainableModel, kind="colbert"):
    """ColBERT in training: ``init`` is a BERT-style encoder (default all-MiniLM-L6-v2, whose
    vocabulary has the ``[unused0]``/``[unused1]`` markers) or a ColBERT checkpoint;
    ``max_length`` tokens per passage, ``query_length`` per query, ``dim`` dimensions per token
    vector; ``layers`` keeps the first layers of the encoder."""

    usage = ("from rerank.score import ColBERT\n"
             "scorer = ColBERT(\"{path}\")  # late interaction: MaxSim over token vectors")
    pipeline_tag = "sentence-similarity"

    def __init__(self, init: str = MINILM_L6, *, max_length: int = 180, layers: int | None = None,
                 query_length: int = 32, dim: int = 128) -> None:
        import torch  # deferred: torch takes long to import
        from transformers import AutoConfig, AutoModel  # deferred: transformers takes long to import

        super().__init__(init, max_length)
        config = AutoConfig.from_pretrained(self.path)
        if layers is not None:
            config.num_hidden_layers = layers
        body = AutoModel.from_pretrained(self.path, config=config, add_pooling_layer=False) \
            if config.model_type == "bert" else AutoModel.from_pretrained(self.path, config=config)
        existing = self._existing_projection(Path(self.path))
        self.dim = int(existing.shape[0]) if existing is not None else dim
        self.net = _network(body, self.dim)
        if existing is not None:
            with torch.no_grad():
                self.net.linear.weight.copy_(existing)
        self.query_length = query_length
        tok = self.tokenizer
        markers = [tok.convert_tokens_to_ids(marker) for marker in ("[unused0]", "[unused1]")]
        if tok.unk_token_id in markers or None in markers or tok.mask_token_id is None:
            raise ValueError(f"{init}: a ColBERT student needs a BERT-style vocabulary with [unused0], [unused1] "
                             "and [MASK]")
        self.markers: list[int] = [int(marker) for marker in markers]  # type: ignore[arg-type]  # one token: one id
        self.skip = sorted({ids[0] for c in string.punctuation if (ids := tok(c, add_special_tokens=False)["input_ids"])})

    @staticmethod
    def _existing_projection(folder: Path):
        from safetensors.torch import load_file  # deferred: safetensors takes long to import

        path = folder / "model.safetensors"
        if folder.is_dir() and path.is_file():
            tensors = load_file(str(path))
            if "linear.weight" in tensors:
                return tensors["linear.weight"].float()
        return None

    def _batch(self, texts, marker: int, length: int, query: bool):
        import torch  # deferred: torch takes long to import

        tok = self.tokenizer
        body = tok(list(texts), add_special_tokens=False, truncation=True, max_length=length - 3)["input_ids"]
        width = length if query else max(len(b) for b in body) + 3
        ids = torch.full((len(body), width), tok.mask_token_id if query else tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, tokens in enumerate(body):
            row = [tok.cls_token_id, marker, *tokens, tok.sep_token_id]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _encode_queries(self, texts):
        ids, mask = self._batch(texts, self.markers[0], self.query_length, query=True)
        return self._forward(input_ids=ids, attention_mask=mask)

    def _encode_passages(self, texts):
        import torch  # deferred: torch takes long to import

        ids, mask = self._batch(texts, self.markers[1], self.max_length, query=False)
        vectors = self._forward(input_ids=ids, attention_mask=mask)
        keep = mask.bool() & ~torch.isin(ids, torch.tensor(self.skip, device=ids.device))
        return vectors, keep

    def scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """MaxSim of each pair (each distinct text encoded once), differentiable."""
        unique_q = list(dict.fromkeys(queries))
        unique_p = list(dict.fromkeys(passages))
        q = self._encode_queries(unique_q)
        p, keep = self._encode_passages(unique_p)
        q_row = {text: i for i, text in enumerate(unique_q)}
        p_row = {text: i for i, text in enumerate(unique_p)}
        qi = [q_row[x] for x in queries]
        pi = [p_row[x] for x in passages]
        similarity = q[qi] @ p[pi].transpose(1, 2)  # [pairs, query tokens, passage tokens]
        similarity = similarity.masked_fill(~keep[pi].unsqueeze(1), -1e4)
        return similarity.max(dim=2).values.sum(dim=1)

    def save(self, folder: Path) -> None:
        """A ColBERT checkpoint in the Stanford layout (see the module docstring)."""
        from safetensors.torch import save_file  # deferred: safetensors takes long to import

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"bert.{k}": v.detach().contiguous().cpu() for k, v in self.net.bert.state_dict().items()}
        tensors["linear.weight"] = self.net.linear.weight.detach().contiguous().cpu()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config: dict[str, Any] = self.net.config.to_dict()
        config["architectures"] = ["HF_ColBERT"]
        (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        metadata = {"query_maxlen": self.query_length, "doc_maxlen": self.max_length, "dim": self.dim,
                    "mask_punctuation": True, "attend_to_mask_tokens": False, "similarity": "cosine"}
        (folder / "artifact.metadata").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        self.tokenizer.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file  # deferred: safetensors takes long to import

        tensors = load_file(str(Path(folder) / "model.safetensors"), device=str(self.device))
        self.net.bert.load_state_dict({k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")})
        self.net.linear.weight.data.copy_(tensors["linear.weight"])

    def inference_scorer(self, folder: Path) -> Stage:
        return ColBERT(str(folder))

    def describe(self) -> dict:
        return {**super().describe(), "dim": self.dim, "query_length": self.query_length}
