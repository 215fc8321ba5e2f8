"""Model families beyond BERT cross-encoders: each scores exactly as its authors publish.

Every family runs on a tiny model built here from its config with seeded random weights
(:mod:`rerank.testing`; no real Qwen3, Gemma, T5 or mxbai re-ranker ships on PyPI, so none can
be loaded offline), and its scores are checked in fp32 against a reference written below from
the published recipe (model card or authors' code), independently of the engine's recipe code:
for single pairs, and for padded batches of mixed lengths that the engine batches differently.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import rerank
from rerank.recipes import RecipeError, recipe
from rerank.score.detect import ModelKindError, detect_model
from rerank.testing import tiny_model
from rerank.types import Passage, Query

QUERIES = ["what is an axon", "how does a gene cause cancer risk"]
PASSAGES = [
    "Axons carry nerve signals away from the cell body.",
    "The cat sat on the mat.",
    "Proteins fold into shapes that decide what they do in the cell; " * 6,
    "A gene variant was linked to cancer risk in a study of patients.",
    "yes",
]
PAIRS = [(q, p) for q in QUERIES for p in PASSAGES]
EXACT = dict(rtol=1e-5, atol=1e-5)
"""fp32 agreement. The published causal-LM code counts positions from the first pad of a
left-padded batch, the engine from each pair's first token (so a score does not depend on its
batch); with rotary positions that moves a logit by float rounding only (about 1e-5 relative)."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: tiny_model(name, root / name) for name in
            ("qwen3-reranker", "bge-reranker-v2-gemma", "mxbai-rerank-v2", "monot5", "rankt5", "duot5")}


# -- references, from the published recipes --------------------------------------------------
@functools.lru_cache(maxsize=2)
def _causal(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(folder, padding_side="left"),
            AutoModelForCausalLM.from_pretrained(folder).eval())


@torch.no_grad()
def qwen3_reference(folder, pairs, instruction=None, max_length=8192):
    """The Qwen3-Reranker model card: format_instruction, process_inputs, compute_logits."""
    tokenizer, model = _causal(folder)
    instruction = instruction or "Given a web search query, retrieve relevant passages that answer the query"
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
    texts = [f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    inputs = tokenizer(texts, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
    inputs["input_ids"] = [prefix_tokens + ids + suffix_tokens for ids in inputs["input_ids"]]
    batch = tokenizer.pad(inputs, padding=True, return_tensors="pt")
    logits = model(**batch).logits[:, -1, :]
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    two = torch.stack([logits[:, no], logits[:, yes]], dim=1)
    return torch.nn.functional.log_softmax(two, dim=1)[:, 1].exp().numpy(), (two[:, 1] - two[:, 0]).numpy()


def _only_second(first, second, max_length):
    """tokenizer.prepare_for_model(first, second, truncation='only_second', max_length=...)."""
    return first + second[:max(max_length - len(first), 0)]


@torch.no_grad()
def gemma_reference(folder, pairs, max_length=1024):
    """The bge-reranker-v2-gemma model card: get_inputs, then the 'Yes' logit at the last position."""
    tokenizer, model = _causal(folder)
    prompt = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
              "providing a prediction of either 'Yes' or 'No'.")
    prompt_inputs = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer("\n", add_special_tokens=False)["input_ids"]
    items = []
    for query, passage in pairs:
        query_inputs = tokenizer(f"A: {query}", add_special_tokens=False, max_length=max_length * 3 // 4,
                                 truncation=True)["input_ids"]
        passage_inputs = tokenizer(f"B: {passage}", add_special_tokens=False, max_length=max_length,
                                   truncation=True)["input_ids"]
        ids = _only_second([tokenizer.bos_token_id] + query_inputs, sep_inputs + passage_inputs, max_length)
        ids = ids + sep_inputs + prompt_inputs
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    batch = tokenizer.pad(items, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    yes_loc = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    return model(**batch).logits[:, -1, yes_loc].float().numpy()


@torch.no_grad()
def mxbai_reference(folder, pairs, instruction=None, max_length=8192):
    """mxbai-rerank's MxbaiRerankV2: prepare_inputs and the '1' minus '0' logit at the last position."""
    tokenizer, model = _causal(folder)
    task = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
            "query-document pair, carefully analyze the semantic relationship between them, then provide your "
            "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
    prefix = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n"

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    items = []
    for query, document in pairs:
        query_prompt = f"query: {query}"
        if instruction:
            query_prompt = f"instruction: {instruction}\nquery: {query}"
        query_ids = ids(query_prompt)[:max_length * 3 // 4]
        content = _only_second(query_ids, ids("\n") + ids(f"document: {document}")[:max_length], max_length)
        full = ids(prefix) + content + ids("\n") + ids(task) + ids(suffix)
        items.append({"input_ids": full, "attention_mask": [1] * len(full)})
    batch = tokenizer.pad(items, padding="longest", return_tensors="pt")
    logits = model(**batch).logits[:, -1, :]
    return (logits[:, ids("1")[0]] - logits[:, ids("0")[0]]).numpy()


@functools.lru_cache(maxsize=2)
def _t5(folder):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSeq2SeqLM.from_pretrained(folder).eval()


@torch.no_grad()
def t5_reference(folder, texts, tokens):
    """pygaggle's T5 re-rankers: the texts cut at 512 tokens, one decoder step from the start token."""
    tokenizer, model = _t5(folder)
    batch = tokenizer(texts, max_length=512, truncation=True, padding="longest", return_tensors="pt")
    decoder = torch.full((len(texts), 1), model.config.decoder_start_token_id, dtype=torch.long)
    logits = model(**batch, decoder_input_ids=decoder).logits[:, 0, :]
    return logits[:, [tokenizer.convert_tokens_to_ids(t) for t in tokens]]


def monot5_reference(folder, pairs):
    logits = t5_reference(folder, [f"Query: {q} Document: {d} Relevant:" for q, d in pairs], ["▁false", "▁true"])
    log_probs = torch.nn.functional.log_softmax(logits, dim=1)[:, 1]
    return log_probs.exp().numpy(), (logits[:, 1] - logits[:, 0]).numpy()


def rankt5_reference(folder, pairs):
    return t5_reference(folder, [f"Query: {q} Document: {d}" for q, d in pairs], ["<extra_id_10>"])[:, 0].numpy()


def duot5_reference(folder, query, first, second):
    logits = t5_reference(folder, [f"Query: {query} Document0: {first} Document1: {second} Relevant:"],
                          ["▁false", "▁true"])
    return float(torch.softmax(logits, dim=1)[0, 1])


# -- exactness ---------------------------------------------------------------------------------
def _scores(folder, pairs, **options):
    scorer = rerank.load(str(folder), precision="fp32", batch_size=3, **options)
    return scorer.predict(pairs), scorer


def test_qwen3_reranker_scores_as_its_model_card(folders):
    folder = folders["qwen3-reranker"]
    probabilities, log_odds = qwen3_reference(folder, PAIRS)
    np.testing.assert_allclose(_scores(folder, PAIRS, normalize=True)[0], probabilities, **EXACT)
    engine, scorer = _scores(folder, PAIRS)
    np.testing.assert_allclose(engine, log_odds, **EXACT)
    for pair, expected in zip(PAIRS[:2], probabilities[:2]):  # one pair at a time: no padding at all
        assert scorer.predict([pair])[0] == pytest.approx(np.log(expected / (1 - expected)), abs=1e-4)
    assert scorer.recipe.name == "qwen3-reranker" and scorer.runtime_settings()["recipe"] == "qwen3-reranker"


def test_qwen3_reranker_takes_a_user_instruction_and_cuts_the_document_end(folders):
    folder = folders["qwen3-reranker"]
    instruction = "Given a claim, find the passage that supports it"
    _, log_odds = qwen3_reference(folder, PAIRS, instruction=instruction, max_length=120)
    engine, scorer = _scores(folder, PAIRS, instruction=instruction, max_length=120)
    np.testing.assert_allclose(engine, log_odds, **EXACT)
    assert scorer.model.truncated > 0  # the long passage was cut to fit 120 tokens


def test_bge_reranker_v2_gemma_scores_as_its_model_card(folders):
    folder = folders["bge-reranker-v2-gemma"]
    np.testing.assert_allclose(_scores(folder, PAIRS)[0], gemma_reference(folder, PAIRS), **EXACT)
    long_query = [(" ".join(["axon"] * 200), p) for p in PASSAGES[:3]]  # the query keeps at most 3/4 of 64
    np.testing.assert_allclose(_scores(folder, long_query, max_length=64)[0],
                               gemma_reference(folder, long_query, max_length=64), **EXACT)


def test_mxbai_rerank_v2_scores_as_its_authors_code(folders):
    folder = folders["mxbai-rerank-v2"]
    np.testing.assert_allclose(_scores(folder, PAIRS)[0], mxbai_reference(folder, PAIRS), **EXACT)
    with_instruction = _scores(folder, PAIRS, instruction="Find evidence", max_length=96)[0]
    np.testing.assert_allclose(with_instruction, mxbai_reference(folder, PAIRS, "Find evidence", 96), **EXACT)


def test_monot5_and_rankt5_score_as_published(folders):
    probabilities, log_odds = monot5_reference(folders["monot5"], PAIRS)
    np.testing.assert_allclose(_scores(folders["monot5"], PAIRS)[0], log_odds, **EXACT)
    np.testing.assert_allclose(_scores(folders["monot5"], PAIRS, normalize=True)[0], probabilities, **EXACT)
    np.testing.assert_allclose(_scores(folders["rankt5"], PAIRS)[0], rankt5_reference(folders["rankt5"], PAIRS),
                               **EXACT)


def test_duot5_compares_as_published_and_sorts_like_prp(folders):
    folder = folders["duot5"]
    judge = rerank.load(str(folder), precision="fp32", method="allpair").judge
    query = Query("q", QUERIES[0])
    passages = [Passage(str(i), text) for i, text in enumerate(PASSAGES[:4])]
    pairs = [(a, b) for a in passages for b in passages if a is not b]
    expected = [duot5_reference(folder, query.text, a.text, b.text) for a, b in pairs]
    np.testing.assert_allclose(judge.compare_many(query, pairs), expected, **EXACT)
    # allpair with both orders: a passage's score is its summed symmetric preference (duoT5's sym-sum)
    sym = {p.id: 0.0 for p in passages}
    for (a, b), value in zip(pairs, expected):
        sym[a.id] += value
        sym[b.id] += 1 - value
    gaps = np.diff(sorted(sym.values()))
    assert gaps.min() > 1e-4  # distinct sums, so the expected order is not a tie-break
    expected_order = sorted(sym, key=lambda i: -sym[i])
    for method in ("allpair", "heapsort", "sliding"):
        stage = rerank.load(str(folder), precision="fp32", method=method, top_k=4)
        ranked = stage.rank(query.text, [p.text for p in passages])
        assert sorted(r.index for r in ranked) == [0, 1, 2, 3]
        if method == "allpair":
            assert [str(r.index) for r in ranked] == expected_order


# -- detection ---------------------------------------------------------------------------------
def test_each_family_is_detected_from_its_files(folders):
    for name, folder in folders.items():
        found = detect_model(str(folder))
        assert found.family == "reranker" and found.recipe.name == name
    assert detect_model("Qwen/Qwen3-Reranker-0.6B").recipe.name == "qwen3-reranker"  # by Hub id, no files read


def test_a_causal_lm_without_a_reranker_card_stays_an_llm(tmp_path):
    folder = tiny_model("qwen3-reranker", tmp_path / "plain", card=False)
    assert detect_model(str(folder)).family == "llm"


def test_a_reranker_card_on_an_architecture_no_recipe_fits_is_refused(tmp_path):
    folder = tiny_model("qwen3-reranker", tmp_path / "llama-like", card=False, model_type="qwen2")
    (folder / "README.md").write_text("---\npipeline_tag: text-ranking\n---\n# A re-ranker\n", encoding="utf-8")
    with pytest.raises(ModelKindError, match="no recipe for model type 'qwen2'; recipes that fit: mxbai-rerank-v2"):
        detect_model(str(folder))  # the model type alone never decides: its files must name the recipe
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"qwen2"', '"llama"'))
    with pytest.raises(ModelKindError, match="no recipe for model type 'llama'.*register a recipe"):
        rerank.load(str(folder))


def test_a_t5_that_names_no_recipe_lists_the_choices(tmp_path, folders):
    folder = tiny_model("monot5", tmp_path / "t5", card=False)
    with pytest.raises(ModelKindError, match="recipes that fit: monot5, rankt5, duot5.*recipe="):
        rerank.load(str(folder))
    (folder / "README.md").write_text("# monoT5 and duoT5 in one card\n", encoding="utf-8")
    with pytest.raises(ModelKindError, match="several recipes.*monot5, duot5"):
        detect_model(str(folder))
    scorer = rerank.load(str(folder), recipe="monot5", precision="fp32")  # the user says which
    assert scorer.recipe.name == "monot5"


def test_a_model_is_never_scored_under_a_recipe_not_its_own(folders):
    with pytest.raises(RecipeError, match="for qwen3 models, this one is 'gemma'"):
        rerank.load(str(folders["bge-reranker-v2-gemma"]), recipe="qwen3-reranker")
    with pytest.raises(RecipeError, match="no token"):
        rerank.load(str(folders["qwen3-reranker"]), recipe=recipe("qwen3-reranker", tokens=("nope", "yes")))
    with pytest.raises(RecipeError, match="run by the t5-reranker stage"):
        rerank.CausalLMReranker(str(folders["qwen3-reranker"]), recipe="monot5")


def test_a_recipe_is_data_a_user_can_override_and_a_config_can_hold(folders, tmp_path):
    from rerank.config import build_pipeline, dump_pipeline

    custom = recipe("qwen3-reranker").replace(name="qwen3-legal", instruction="Find the statute that applies")
    scorer = rerank.load(str(folders["qwen3-reranker"]), recipe=custom, precision="fp32")
    _, log_odds = qwen3_reference(folders["qwen3-reranker"], PAIRS[:3], instruction="Find the statute that applies")
    np.testing.assert_allclose(scorer.predict(PAIRS[:3]), log_odds, **EXACT)
    path = tmp_path / "p.toml"
    path.write_text(dump_pipeline(scorer), encoding="utf-8")
    rebuilt = build_pipeline(path)
    assert rebuilt.recipe == custom
    np.testing.assert_allclose(rebuilt.predict(PAIRS[:3]), log_odds, **EXACT)
    with pytest.raises(RecipeError, match="no field 'templat'"):
        custom.replace(templat="x")


def test_the_trace_names_the_recipe_and_counts_cut_pairs(folders):
    scorer = rerank.load(str(folders["monot5"]), precision="fp32", max_length=24)
    from rerank.types import Candidates

    [out] = scorer([Candidates(Query("q", QUERIES[0]), [Passage(str(i), t) for i, t in enumerate(PASSAGES)],
                               [0.0] * len(PASSAGES))])
    [cost] = out.trace
    assert cost.settings["recipe"] == "monot5" and cost.counters["truncated_pairs"] >= 1


# -- ColBERT -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colbert_folder(tmp_path_factory):
    return tiny_model("colbert", tmp_path_factory.mktemp("colbert") / "model")


@torch.no_grad()
def colbert_reference(folder, query, passages, query_maxlen=32, doc_maxlen=180):
    """ColBERT's checkpoint code: QueryTokenizer and DocTokenizer ('. ' placeholder replaced by
    the [unused0]/[unused1] marker, [MASK] for query padding), then bert -> linear -> normalize,
    punctuation and padding left out of the passage, and MaxSim."""
    import string

    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    tensors = load_file(str(folder / "model.safetensors"))
    bert = BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False).eval()
    bert.load_state_dict({k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")})
    linear = tensors["linear.weight"]
    tok = AutoTokenizer.from_pretrained(folder)
    q = tok([". " + query], padding="max_length", truncation=True, max_length=query_maxlen, return_tensors="pt")
    ids, mask = q["input_ids"], q["attention_mask"]
    ids[:, 1] = tok.convert_tokens_to_ids("[unused0]")
    ids[ids == tok.pad_token_id] = tok.mask_token_id
    Q = torch.nn.functional.normalize(bert(ids, attention_mask=mask)[0] @ linear.T, p=2, dim=2)[0]
    d = tok([". " + p for p in passages], padding="longest", truncation="longest_first", max_length=doc_maxlen,
            return_tensors="pt")
    ids, mask = d["input_ids"], d["attention_mask"]
    ids[:, 1] = tok.convert_tokens_to_ids("[unused1]")
    skip = {tok.encode(c, add_special_tokens=False)[0] for c in string.punctuation}
    D = torch.nn.functional.normalize(bert(ids, attention_mask=mask)[0] @ linear.T, p=2, dim=2)
    scores = []
    for row, vectors in zip(ids, D):
        keep = torch.tensor([t not in skip and t != tok.pad_token_id for t in row.tolist()])
        scores.append(float((Q @ vectors[keep].T).max(dim=1).values.sum()))
    return np.array(scores)


def test_colbert_scores_as_its_checkpoint_code(colbert_folder):
    scorer = rerank.load(str(colbert_folder), precision="fp32", batch_size=2)
    assert type(scorer).__name__ == "ColBERT" and scorer.runtime_settings()["recipe"] == "colbert"
    for query in QUERIES:
        engine = scorer.score(Query("q", query), [Passage(str(i), t) for i, t in enumerate(PASSAGES)])
        np.testing.assert_allclose(engine, colbert_reference(colbert_folder, query, PASSAGES), **EXACT)
    short = scorer.encoder.document_length, scorer.encoder.query_length
    assert short == (180, 32)  # read from artifact.metadata


def test_colbert_stored_embeddings_rank_like_text_and_need_no_passage_encoding(colbert_folder, tmp_path):
    from rerank.retrieve.build import build_index
    from rerank.retrieve.tokens import TokenEmbeddingIndex
    from rerank.types import Candidates

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"_id": "d{i}", "title": "", "text": {t!r}}}\n'.replace("'", '"')
                              for i, t in enumerate(PASSAGES)), encoding="utf-8")
    index = build_index(corpus, tmp_path / "idx" / "colbert", "colbert", colbert_model=str(colbert_folder),
                        precision="fp32", progress=False)
    loaded = TokenEmbeddingIndex.load(index.folder, precision="fp32")
    assert isinstance(loaded.matrix, np.memmap) and loaded.matrix.dtype == np.float16
    stored = rerank.load(str(colbert_folder), precision="fp32", index=str(index.folder))
    from_text = rerank.load(str(colbert_folder), precision="fp32")
    passages = [Passage(f"d{i}", t) for i, t in enumerate(PASSAGES)]
    [out] = stored([Candidates(Query("q", QUERIES[0]), passages, [0.0] * len(passages))])
    assert out.trace[-1].counters["encoded_now"] == 0
    np.testing.assert_allclose(stored.score(Query("q", QUERIES[0]), passages),
                               from_text.score(Query("q", QUERIES[0]), passages), rtol=2e-3, atol=2e-2)  # float16
    [found] = loaded.search([Query("q", QUERIES[0])], k=len(PASSAGES))  # exhaustive MaxSim, same scores
    expected = dict(zip([p.id for p in out.passages], out.scores))
    np.testing.assert_allclose([expected[p.id] for p in found.passages], found.scores, rtol=1e-5, atol=1e-4)


def test_colbert_maxp_windows_score_a_long_passage_by_its_best_window(colbert_folder, tmp_path):
    from rerank.encoders.tokens import maxsim
    from rerank.retrieve.build import build_index
    from rerank.retrieve.tokens import TokenEmbeddingIndex
    from rerank.score.colbert import ColBERT

    # A passage far longer than 16 tokens: under "first" only its start counts; under "max" each
    # window is encoded as a passage of its own ([CLS] marker window [SEP]) and the best one counts.
    long_text = " ".join(PASSAGES * 3)
    passages = [Passage("long", long_text), *[Passage(f"d{i}", t) for i, t in enumerate(PASSAGES)]]
    windowed = ColBERT(str(colbert_folder), precision="fp32", document_length=16, windows="max", stride=6)
    first = ColBERT(str(colbert_folder), precision="fp32", document_length=16)
    encoder = windowed.encoder
    ids = encoder.tokenizer(long_text, add_special_tokens=False)["input_ids"]
    windows = encoder.document_windows([long_text])[0]
    assert len(windows) > 2 and windows[0][2:-1] == ids[:13] and windows[1][2:-1] == ids[6:19]
    assert windows[-1][2:-1] == ids[-13:]  # the last window ends with the passage
    query = encoder.encode_queries([QUERIES[1]])[0]
    by_hand = [maxsim(query, encoder._encode_sequences([w])[0]) for w in windows]
    scores = windowed.score(Query("q", QUERIES[1]), passages)
    np.testing.assert_allclose(scores[0], max(by_hand), rtol=1e-5)
    np.testing.assert_allclose(first.score(Query("q", QUERIES[1]), passages)[0], by_hand[0], rtol=1e-5)
    short = [i for i, p in enumerate(passages) if len(encoder.tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 13]
    assert short  # a passage that fits one window scores the same either way
    np.testing.assert_allclose(np.asarray(scores)[short], np.asarray(first.score(Query("q", QUERIES[1]), passages))[short],
                               rtol=1e-5)
    # Stored: the index keeps every window and scores (and searches) by the best one.
    corpus = tmp_path / "corpus.jsonl"
    import json

    corpus.write_text("".join(json.dumps({"_id": p.id, "title": "", "text": p.text}) + "\n" for p in passages))
    index = build_index(corpus, tmp_path / "idx" / "colbert", "colbert", colbert_model=str(colbert_folder),
                        precision="fp32", document_length=16, colbert_windows="max", progress=False)
    loaded = TokenEmbeddingIndex.load(index.folder, precision="fp32")
    assert loaded.windows == "max" and len(loaded.window_vectors(["long"])["long"]) == len(windows)
    stored = ColBERT(str(colbert_folder), precision="fp32", document_length=16, windows="max", stride=6, index=loaded)
    np.testing.assert_allclose(stored.score(Query("q", QUERIES[1]), passages), scores, rtol=2e-3, atol=2e-2)
    [found] = loaded.search([Query("q", QUERIES[1])], k=len(passages))
    expected = dict(zip([p.id for p in passages], stored.score(Query("q", QUERIES[1]), passages)))
    np.testing.assert_allclose([expected[p.id] for p in found.passages], found.scores, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="holds 'max' windows"):
        ColBERT(str(colbert_folder), precision="fp32", index=loaded)
    with pytest.raises(ValueError, match="windows must be one of first, max"):
        ColBERT(str(colbert_folder), precision="fp32", windows="mean")


# -- FIRST: listwise by the first identifier's logits ------------------------------------------
def test_first_orders_a_window_by_the_first_answer_tokens_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank.runtimes.local_llm import TransformersLLM
    from rerank.score.listwise import ListwiseReranker
    from rerank.score.prompts import LISTWISE_FIRST
    from rerank.types import Candidates

    folder = tiny_model("qwen3-reranker", tmp_path / "lm", card=False)
    stage = ListwiseReranker(TransformersLLM(str(folder), precision="fp32"), mode="first", window=4, step=2,
                             max_passage_tokens=4096)
    passages = [Passage(str(i), t) for i, t in enumerate(PASSAGES)]
    [out] = stage([Candidates(Query("q", QUERIES[0]), passages, [0.0] * len(passages))])
    assert out.trace[-1].counters["generated_tokens"] == 0 and out.trace[-1].model_calls == 2

    # The reference, window by window from the bottom: positions 1-4, then 0-2 of the new order.
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    letters = "ABCD"

    def reference(window):
        listing = "\n".join(f"[{letter}] {p.text}" for letter, p in zip(letters, window))
        prompt = LISTWISE_FIRST.format(n=len(window), query=QUERIES[0], passages=listing)
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in letters[:len(window)]]
        values = logits[ids].numpy()
        assert len(set(values.round(6))) == len(values)  # no ties: the order is the logits'
        return [window[i] for i in np.argsort(-values, kind="stable")]

    bottom = reference(passages[1:5])
    expected = reference([passages[0], *bottom[:2]]) + bottom[2:]
    assert [p.id for p in out.passages] == [p.id for p in expected]
    with pytest.raises(ValueError, match="at most 26"):
        ListwiseReranker(stage.llm, mode="first", window=30)


# -- served ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3-reranker", "monot5", "duot5", "colbert"])
def test_every_family_is_served_behind_the_rerank_api(family, folders, colbert_folder, tmp_path):
    import httpx

    from rerank.serve import RerankServer, load_service

    folder = colbert_folder if family == "colbert" else folders[family]
    kind = {"qwen3-reranker": "causal-reranker", "monot5": "t5-reranker", "duot5": "duot5", "colbert": "colbert"}
    config = tmp_path / "m.toml"  # served as model "m", the file's name
    config.write_text(f'pipeline = "m"\n\n[stages.m]\nkind = "{kind[family]}"\nmodel = "{folder}"\n'
                      f'precision = "fp32"\n\n[serve]\nport = 0\nmax_wait_ms = 20\n', encoding="utf-8")
    models, settings = load_service(str(config))
    from rerank.config import build_pipeline

    expected = build_pipeline(config).rank(QUERIES[0], PASSAGES)
    with RerankServer(models, settings) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            answer = http.post(path, json={"query": QUERIES[0], "documents": PASSAGES, "raw_scores": True,
                                           "model": "m"})
            assert answer.status_code == 200, answer.text
            got = [(r["index"], r["relevance_score"]) for r in answer.json()["results"]]
            assert [i for i, _ in got] == [r.index for r in expected]
            np.testing.assert_allclose([s for _, s in got], [r.score for r in expected], rtol=1e-4, atol=1e-4)


def test_a_colbert_student_trains_with_margin_mse_and_saves_a_checkpoint_the_stage_loads(colbert_folder, tmp_path):
    from rerank.train.losses import margin_mse
    from rerank.train.students import build_model, student_kinds

    assert "colbert" in student_kinds()  # registered by its own module: rerank train distill --student colbert
    torch.manual_seed(0)
    student = build_model("colbert", str(colbert_folder), max_length=180)
    queries, passages = [QUERIES[0]] * 3, PASSAGES[:3]
    teacher = torch.tensor([[4.0, -2.0, 0.5]])  # the teacher's scores of the three passages
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        student.train(True)
        loss = margin_mse(student.scores(queries, passages).unsqueeze(0), teacher).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 2
    student.train(False)
    student.save(tmp_path / "student")
    with torch.no_grad():
        trained = student.scores(queries, passages).numpy()
    stage = student.inference_scorer(tmp_path / "student")
    assert type(stage).__name__ == "ColBERT" and detect_model(str(tmp_path / "student")).recipe.name == "colbert"
    loaded = rerank.load(str(tmp_path / "student"), precision="fp32")
    np.testing.assert_allclose(loaded.score(Query("q", QUERIES[0]), [Passage(str(i), t) for i, t in enumerate(passages)]),
                               trained, **EXACT)


def test_bf16_matmuls_cast_the_linear_weights_once_and_leave_tied_embeddings_fp32(tmp_path):
    from transformers import AutoModelForCausalLM

    from rerank.precision import bf16_matmuls

    folder = tiny_model("qwen3-reranker", tmp_path / "lm", card=False)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as Qwen3-0.6B's are
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, -1]
        wrapped = bf16_matmuls(model)
        got = wrapped(input_ids=ids).logits[0, -1].float()
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=0.05, atol=0.05 * float(expected.abs().max()))  # bf16 products only


@pytest.mark.parametrize("family", ["qwen3-reranker", "bge-reranker-v2-gemma", "mxbai-rerank-v2"])
def test_a_query_prefix_runs_once_and_leaves_the_scores_as_they_were(family, folders):
    """The tokens every pair of a query shares run once and their key/value cache serves the
    passages: the same scores as running every pair whole (fp32, 1e-5), fewer forward tokens."""
    from rerank.types import Candidates, Passage, Query

    folder = folders[family]
    shared = rerank.load(str(folder), precision="fp32", batch_size=3)
    whole = rerank.load(str(folder), precision="fp32", batch_size=3, share_prefix=False)
    np.testing.assert_allclose(shared.predict(PAIRS), whole.predict(PAIRS), **EXACT)
    batch = [Candidates(Query(f"q{i}", q), [Passage(f"p{j}", p) for j, p in enumerate(PASSAGES)], [0.0] * len(PASSAGES))
             for i, q in enumerate(QUERIES)]
    fast, slow = shared(batch), whole(batch)
    for a, b in zip(fast, slow):  # compared by passage: near-equal scores may order either way
        by_id = dict(zip([p.id for p in b.passages], b.scores))
        np.testing.assert_allclose(a.scores, [by_id[p.id] for p in a.passages], **EXACT)
        shared_tokens = a.trace[-1].counters["shared_prefix_tokens"]
        assert shared_tokens >= 8 and b.trace[-1].counters["shared_prefix_tokens"] == 0
        assert a.trace[-1].tokens == b.trace[-1].tokens - shared_tokens * (len(PASSAGES) - 1)


# -- long documents ------------------------------------------------------------------------------
POINTWISE_RECIPES = ("qwen3-reranker", "bge-reranker-v2-gemma", "mxbai-rerank-v2", "monot5", "rankt5")


@pytest.mark.parametrize("name", POINTWISE_RECIPES)
def test_a_passage_twenty_times_the_limit_keeps_the_scoring_suffix_and_windows_score_as_their_parts(folders, name):
    """FirstP cuts the passage, never the text after it (monoT5's "Relevant:", a chat turn's end);
    MaxP and mean read every window, and a window's score inside the batch is its score alone."""
    tok = rerank.load(str(folders[name]), precision="fp32").tokenizer
    limit = recipe(name).fixed_tokens(tok) + 40  # room for the query and about 30 passage tokens
    scorer = rerank.load(str(folders[name]), precision="fp32", max_length=limit)
    long_text = " ".join(f"axon{i % 7} carries signal {i}" for i in range(20 * limit // 4))
    assert len(tok(long_text, add_special_tokens=False)["input_ids"]) >= 20 * limit
    query = QUERIES[0]
    [ids], [cut] = scorer.model.encode([query], [long_text])
    [short], _ = scorer.model.encode([query], ["MARKER"])
    prefix, _, suffix = scorer.model.static
    # A split recipe's max_length counts query and passage; its fixed prompt comes on top (as published).
    assert cut and len(ids) <= limit + (len(prefix) + len(suffix) if scorer.recipe.layout == "split" else 0)
    after = tok.decode(short).split("MARKER")[-1]
    assert after.strip() and tok.decode(ids).endswith(after), (name, after)

    batch = [rerank.types.Candidates(Query("q", query), [Passage("long", long_text), Passage("s", PASSAGES[0])],
                                     [0.0, 0.0])]
    for how in ("max", "mean"):
        scorer.windows = how
        [scores], work = scorer.score_pairs(batch)
        windows = scorer._windows(batch)
        assert work.counters_per_query[0]["windows"] == len(windows.texts) >= 20  # no window exceeds the limit
        scorer.windows = "first"
        alone = scorer.predict([(query, text) for text in windows.texts])
        mine = alone[windows.owner == 0]
        expected = mine.max() if how == "max" else mine.mean()
        assert scores[0] == pytest.approx(expected, abs=1e-5) and scores[1] == pytest.approx(alone[-1], abs=1e-5)
        for text in windows.texts[:-1]:
            [[window_ids], [window_cut]] = scorer.model.encode([query], [text])
            assert not window_cut, "every window fits beside the query whole"


def test_a_query_instruction_changes_the_input_of_families_that_take_one(folders):
    scorer = rerank.load(str(folders["qwen3-reranker"]), precision="fp32")
    assert scorer.takes_instruction
    plain = Query("q", QUERIES[0])
    told = Query("q", QUERIES[0], instruction="Find the passage that defines the term")
    batch = [rerank.types.Candidates(q, [Passage(str(i), t) for i, t in enumerate(PASSAGES)], [0.0] * len(PASSAGES))
             for q in (plain, told)]
    scores = scorer.score_pairs(batch)[0]
    _, reference = qwen3_reference(folders["qwen3-reranker"], [(QUERIES[0], p) for p in PASSAGES],
                                   instruction="Find the passage that defines the term")
    np.testing.assert_allclose(scores[1], reference, **EXACT)
    assert not np.allclose(scores[0], scores[1])
    assert not rerank.load(str(folders["monot5"]), precision="fp32").takes_instruction
