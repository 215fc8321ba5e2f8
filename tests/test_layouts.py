"""BRIGHT and T2Ranking read from local folders in their published layouts (fixtures made here:
the full collections are not reachable offline), opened like any BEIR folder, indexed and
evaluated from the CLI, with BRIGHT's excluded ids removed from runs before scoring."""
from __future__ import annotations

import json

import pytest

from rerank.cli import main
from rerank.data import open_dataset
from rerank.errors import DataError
from rerank.evaluate import evaluate

DOCS = {"bio-1": "Leaves turn red in autumn as chlorophyll breaks down and anthocyanins appear.",
        "bio-2": "Chlorophyll absorbs light for photosynthesis in plant cells.",
        "bio-3": "Autumn leaves: why do maple leaves change colour in the fall?",
        "bio-4": "Bees navigate by the position of the sun."}
LONG = {"bio-long-1": DOCS["bio-1"] + " " + DOCS["bio-2"], "bio-long-2": DOCS["bio-4"]}
EXAMPLES = [
    {"id": "0", "query": "Why do leaves change colour in autumn?", "reasoning": "pigments",
     "gold_ids": ["bio-1", "bio-2"], "gold_ids_long": ["bio-long-1"], "excluded_ids": ["bio-3"]},
    {"id": "1", "query": "How do bees find their way?", "reasoning": "sun compass",
     "gold_ids": ["bio-4"], "gold_ids_long": ["bio-long-2"], "excluded_ids": ["N/A"]},
]


def _bright(root, fmt: str = "parquet"):
    """The Hub layout: examples/, documents/, long_documents/, one file per task."""
    tables = {"examples": EXAMPLES, "documents": [{"id": k, "content": v} for k, v in DOCS.items()],
              "long_documents": [{"id": k, "content": v} for k, v in LONG.items()]}
    for part, rows in tables.items():
        (root / part).mkdir(parents=True)
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), root / part / "biology-00000-of-00001.parquet")
        else:
            (root / part / "biology.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_bright_task_opens_as_a_beir_dataset_with_its_exclusions(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    root = _bright(tmp_path / "BRIGHT", fmt)
    data = open_dataset(f"bright:biology:{root}")
    assert set(data.corpus()) == set(DOCS)
    assert [q.text for q in data.queries("test")] == [e["query"] for e in EXAMPLES]
    assert data.qrels("test") == {"0": {"bio-1": 1, "bio-2": 1}, "1": {"bio-4": 1}}
    assert data.excluded() == {"0": {"bio-3"}}  # "N/A" means none
    long = open_dataset(f"bright:biology-long:{root}")
    assert set(long.corpus()) == set(LONG) and long.qrels("test") == {"0": {"bio-long-1": 1}, "1": {"bio-long-2": 1}}
    assert open_dataset(f"bright:biology:{root}").root == data.root  # copied once


def test_bright_excluded_ids_leave_the_run_before_scoring(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    root = _bright(tmp_path / "BRIGHT")
    spec = f"bright:biology:{root}"
    # the excluded bio-3 ranks first for query 0: removed, the two gold ones move up to ranks 1-2
    run = {"0": {"bio-3": 3.0, "bio-1": 2.0, "bio-2": 1.0}, "1": {"bio-4": 1.0}}
    data = open_dataset(spec)
    kept = evaluate(run, data.qrels("test"), ["nDCG@2"], excluded=data.excluded())
    plain = evaluate(run, data.qrels("test"), ["nDCG@2"])
    assert kept.aggregate["nDCG@2"] == pytest.approx(1.0) and plain.aggregate["nDCG@2"] < 0.9
    # the CLI: index the task with BM25, retrieve, evaluate against the task (exclusions applied)
    assert main(["index", spec, "--name", "bright-bio", "--indexes-dir", str(tmp_path / "idx")]) == 0
    out = tmp_path / "bm25.trec"
    assert main(["retrieve", "--index", str(tmp_path / "idx" / "bright-bio" / "bm25"), "--queries", spec,
                 "-k", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--qrels", spec, "-m", "nDCG@10", "R@4", "--format", "json"]) == 0
    scores = json.loads(capsys.readouterr().out)["bm25.trec"]["aggregate"]
    from rerank.data import read_run

    retrieved = read_run(out)
    assert "bio-3" in retrieved["0"], "BM25 retrieves the excluded document; evaluation drops it"
    with_exclusions = evaluate(retrieved, data.qrels("test"), ["nDCG@10"], excluded=data.excluded())
    without = evaluate(retrieved, data.qrels("test"), ["nDCG@10"])
    assert scores["nDCG@10"] == pytest.approx(with_exclusions.aggregate["nDCG@10"])
    assert scores["nDCG@10"] > without.aggregate["nDCG@10"]


def test_bright_layout_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    root = _bright(tmp_path / "BRIGHT", "jsonl")
    with pytest.raises(DataError, match="no examples for BRIGHT task 'physics'.*biology"):
        open_dataset(f"bright:physics:{root}")
    with pytest.raises(DataError, match="bright:<task>"):
        open_dataset("bright:biology")
    bad = [dict(EXAMPLES[0], gold_ids=["bio-9"])]
    (root / "examples" / "biology.jsonl").write_text(json.dumps(bad[0]) + "\n")
    with pytest.raises(DataError, match="gold ids not among the documents"):
        open_dataset(f"bright:biology:{root}")
    assert not list((tmp_path / "cache" / "bright").glob("biology-*/corpus.jsonl.gz")), "nothing half-written"


def _t2ranking(root, header: bool = True):
    root.mkdir(parents=True)
    passages = {"100": "北京是中国的首都，也是政治和文化中心。", "101": "上海是中国最大的经济城市。",
                "102": "熊猫主要生活在四川的山区。", "103": "长城是古代中国修建的防御工程。"}
    queries = {"1": "中国的首都是哪里", "2": "熊猫生活在哪里"}
    (root / "collection.tsv").write_text(("pid\ttext\n" if header else "") +
                                         "".join(f"{k}\t{v}\n" for k, v in passages.items()), encoding="utf-8")
    (root / "queries.dev.tsv").write_text(("qid\ttext\n" if header else "") +
                                          "".join(f"{k}\t{v}\n" for k, v in queries.items()), encoding="utf-8")
    (root / "qrels.dev.tsv").write_text(("qid\t-\tpid\trel\n" if header else "") +
                                        "1\t0\t100\t3\n1\t0\t101\t1\n1\t0\t103\t0\n2\t0\t102\t2\n", encoding="utf-8")
    (root / "qrels.retrieval.dev.tsv").write_text("qid\tpid\n1\t100\n2\t102\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("header", [True, False])
def test_t2ranking_folder_with_graded_labels_and_chinese_bm25(tmp_path, monkeypatch, capsys, header):
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    root = _t2ranking(tmp_path / "T2Ranking", header)
    spec = f"t2ranking:{root}"
    data = open_dataset(spec)
    assert data.qrels("dev") == {"1": {"100": 3, "101": 1, "103": 0}, "2": {"102": 2}}  # 4 levels, 0 kept
    assert [q.id for q in data.queries("dev")] == ["1", "2"] and len(data.corpus()) == 4
    assert main(["index", spec, "--name", "t2", "--language", "zh", "--indexes-dir", str(tmp_path / "idx")]) == 0
    out = tmp_path / "bm25.trec"
    assert main(["retrieve", "--index", str(tmp_path / "idx" / "t2" / "bm25"), "--queries", spec, "--split", "dev",
                 "-k", "3", "--out", str(out)]) == 0
    top = {}
    for line in out.read_text().splitlines():
        qid, _, pid, rank, _, _ = line.split()
        if rank == "1":
            top[qid] = pid
    assert top == {"1": "100", "2": "102"}  # bigrams match 首都 and 熊猫
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--qrels", spec, "--split", "dev", "-m", "nDCG@3",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["bm25.trec"]["aggregate"]["nDCG@3"] > 0.9


def test_t2ranking_errors_name_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    root = _t2ranking(tmp_path / "T2Ranking")
    with open(root / "qrels.dev.tsv", "a", encoding="utf-8") as fh:
        fh.write("2\t0\t999\t1\n")
    with pytest.raises(DataError, match=r"qrels.dev.tsv.*999.*not in collection.tsv"):
        open_dataset(f"t2ranking:{root}")
    (root / "collection.tsv").write_bytes(b"pid\ttext\n100\t\xff\xfe bad\n")
    with pytest.raises(DataError, match="not UTF-8"):
        open_dataset(f"t2ranking:{root}")
    with pytest.raises(DataError, match="collection.tsv"):
        open_dataset(f"t2ranking:{tmp_path / 'nowhere'}")
