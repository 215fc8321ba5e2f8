"""Tiny models of each family, built offline from a config with seeded random weights, for
testing a recipe (or a new family) without downloading anything.

:func:`tiny_model` writes a folder with ``config.json``, weights, a tokenizer trained on the
spot (byte-level BPE with a ChatML vocabulary for the causal LMs, a SentencePiece-style unigram
for T5, WordPiece for BERT) and a model card whose front matter says what the model is, just as
a published checkpoint's files do::

    folder = tiny_model("qwen3-reranker", tmp_path / "qwen3")
    rerank.load(str(folder)).rank("what is an axon", ["Axons carry nerve signals.", "The cat sat."])

``shape="published"`` builds the layer sizes of the smallest published checkpoint of the family
instead (random weights; for speed measurements).
"""
from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.recipes import recipes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<pad>")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")
_WORDS = ("axon nerve signal cell protein gene study patients cancer treatment risk effect blood brain "
          "what is the of and a in to for with how does cause why which are was were by on from that this "
          "query document passage relevant true false yes no Yes No 0 1 instruction given search web retrieve "
          "answer judge whether meets requirements based provided note can only be system user assistant think "
          "relevance expert evaluates match binary judgment semantic relationship carefully analyze pair")


def _corpus(texts: Iterable[str] = ()) -> list[str]:
    lines = [text for r in recipes().values() for text in (r.prefix, r.suffix, r.template, r.query_template,
                                                              r.passage_template, r.instruction or "")]
    words = _WORDS.split()
    lines += [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += ["yes", "no", "Yes", "No", "true", "false"] * 50 + [" true", " false"] * 50 + list(texts)
    return [line for line in lines if line]


def byte_bpe_tokenizer(vocab_size: int = 600, padding_side: str = "left",
                       texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2/Qwen style) with ChatML special tokens and ``yes``,
    ``no``, ``Yes``, ``0``, ``1`` as single tokens, trained on the recipes' prompts (and ``texts``)."""
    from tokenizers import (  # deferred: tokenizers takes long to import
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # deferred: transformers takes long to import

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CHATML_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   padding_side=padding_side)


def unigram_tokenizer(extra_ids: int = 16, texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A SentencePiece-style unigram tokenizer (T5 style): ``▁`` word pieces over a small
    vocabulary (every other text falls back to single characters), ``</s>`` after each text,
    ``<extra_id_N>`` tokens, and ``▁true``/``▁false`` as single tokens."""
    from tokenizers import (  # deferred: tokenizers takes long to import
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast  # deferred: transformers takes long to import

    words = dict.fromkeys([*_WORDS.split(), "Query", "Document", "Document0", "Document1", "Relevant", "true", "false",
                           *(w for text in texts for w in text.split())])
    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [(token, 0.0) for token in T5_SPECIALS] + [(f"▁{w}", -2.0) for w in words] + [("▁", -3.0)]
    vocab += [(c, -6.0) for c in chars] + [(f"▁{c}", -5.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(extra_ids)]})
    return fast


def wordpiece_tokenizer(words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A BERT WordPiece tokenizer over a small vocabulary (``[unused0]``, ``[unused1]`` included)."""
    from tokenizers import (  # deferred: tokenizers takes long to import
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast  # deferred: transformers takes long to import

    specials = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = list(dict.fromkeys([*specials, *_WORDS.lower().split(), *words, *".,?!;:'\"()-",
                                *"abcdefghijklmnopqrstuvwxyz0123456789",
                                *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789")]))
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                   cls_token="[CLS]", mask_token="[MASK]")


_CARDS = {
    "qwen3-reranker": ("text-ranking", "Tiny Qwen3-Reranker", "qwen3"),
    "bge-reranker-v2-gemma": ("text-classification", "Tiny bge-reranker-v2-gemma", "gemma"),
    "mxbai-rerank-v2": ("text-ranking", "Tiny mxbai-rerank-v2", "qwen2"),
    "monot5": ("text2text-generation", "Tiny monoT5", "t5"),
    "rankt5": ("text2text-generation", "Tiny RankT5", "t5"),
    "duot5": ("text2text-generation", "Tiny duoT5", "t5"),
    "colbert": ("sentence-similarity", "Tiny ColBERT", "bert"),
}

_PUBLISHED: dict[str, dict[str, Any]] = {  # the smallest published checkpoint's layer sizes
    "qwen3": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151669),
    "gemma": dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                  num_key_value_heads=1, head_dim=256, vocab_size=256000),
    "qwen2": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, head_dim=64, vocab_size=151936),
    "t5": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, vocab_size=32128),
}


def _config(model_type: str, vocab_size: int, shape: str, tokenizer) -> Any:
    from transformers import (  # deferred: transformers takes long to import
        GemmaConfig,
        Qwen2Config,
        Qwen3Config,
        T5Config,
    )

    if model_type == "t5":
        sizes: dict[str, Any] = _PUBLISHED["t5"] if shape == "published" else dict(
            d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
        sizes = {**sizes, "vocab_size": max(sizes.get("vocab_size", 0), vocab_size)}
        sizes.update(relative_attention_num_buckets=8 if shape != "published" else 32, initializer_factor=1.0,
                     decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)  # T5 passes these to its base
        return T5Config(**sizes)
    sizes = _PUBLISHED[model_type] if shape == "published" else dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8)
    sizes = {**sizes, "vocab_size": max(sizes.get("vocab_size", 0), vocab_size)}
    common = dict(max_position_embeddings=8192, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, initializer_range=0.02 if shape == "published" else 0.3,
                  tie_word_embeddings=True)
    config_class = {"qwen3": Qwen3Config, "qwen2": Qwen2Config, "gemma": GemmaConfig}
    return config_class[model_type](**sizes, **common)


def tiny_model(recipe_name: str, folder: str | Path, *, seed: int = 0, shape: str = "tiny", card: bool = True,
               model_type: str | None = None, texts: Iterable[str] = ()) -> Path:
    """A folder holding a model of ``recipe_name``'s family (tiny, or ``shape="published"``),
    its tokenizer and (``card``) a model card naming the recipe; ``model_type`` overrides the
    architecture (to build a model a recipe does not fit); ``texts``: what the tokenizer should
    know well (a BPE of 8,000 tokens is trained on them, or their words join the unigram vocabulary)."""
    import torch  # deferred: torch takes long to import
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM  # deferred: transformers takes long to import

    pipeline_tag, title, default_type = _CARDS[recipe_name]
    model_type = model_type or default_type
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if recipe_name == "colbert":
        return _tiny_colbert(folder, seed=seed, shape=shape)
    texts = list(texts)
    if model_type == "t5":
        tokenizer = unigram_tokenizer(texts=texts)
    else:
        tokenizer = byte_bpe_tokenizer(8000 if texts else 600, texts=texts)
    config = _config(model_type, len(tokenizer), shape, tokenizer)
    torch.manual_seed(seed)
    loader = AutoModelForSeq2SeqLM if model_type == "t5" else AutoModelForCausalLM
    model = loader.from_config(config)
    if shape != "published" and model_type == "t5":
        with torch.no_grad():  # T5's own init gives near-equal logits at this size; spread them
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.3)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if card:
        (folder / "README.md").write_text(f"---\npipeline_tag: {pipeline_tag}\nlibrary_name: transformers\n---\n"
                                          f"# {title}\n\nRandom weights, for tests.\n", encoding="utf-8")
    return folder


def _tiny_colbert(folder: Path, *, seed: int, shape: str, dim: int = 16) -> Path:
    """A ColBERT checkpoint in the Stanford layout: ``bert.*`` and ``linear.weight`` in one
    safetensors file, ``architectures: ["HF_ColBERT"]`` and ``artifact.metadata``."""
    import torch  # deferred: torch takes long to import
    from safetensors.torch import save_file  # deferred: safetensors takes long to import
    from transformers import BertConfig, BertModel  # deferred: transformers takes long to import

    tokenizer = wordpiece_tokenizer()
    sizes: dict[str, Any] = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072) \
        if shape == "published" else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64)
    dim = 128 if shape == "published" else dim
    config = BertConfig(vocab_size=max(len(tokenizer), 30522 if shape == "published" else 0), **sizes,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                        initializer_range=0.02 if shape == "published" else 0.3)
    torch.manual_seed(seed)
    body = BertModel(config, add_pooling_layer=False).eval()
    linear = torch.nn.Linear(config.hidden_size, dim, bias=False)
    tensors = {f"bert.{k}": v.contiguous() for k, v in body.state_dict().items()}
    tensors["linear.weight"] = linear.weight.detach().contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    saved = config.to_dict()
    saved["architectures"] = ["HF_ColBERT"]
    (folder / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")
    (folder / "artifact.metadata").write_text(json.dumps({"query_maxlen": 32, "doc_maxlen": 180, "dim": dim,
                                                          "mask_punctuation": True, "attend_to_mask_tokens": False,
                                                          "similarity": "cosine"}, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\npipeline_tag: sentence-similarity\ntags: [ColBERT]\n---\n"
                                      "# Tiny ColBERT\n\nRandom weights, for tests.\n", encoding="utf-8")
    return folder
