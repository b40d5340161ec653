"""Overlap of training texts with evaluation sets (n-gram index) and with each other (MinHash-LSH)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collate_assets.core.errors import CollateError
from collate_assets.core.pack.overlap import (
    EvalIndex,
    lsh_parameters,
    near_duplicates,
    record_text,
    strings_of,
    word_hashes,
)

SHARED = "/work/shared/data"
KTO = f"{SHARED}/llamafactory_kto_en_demo/kto_en_demo.json"
SHARED_FILES = [f"{SHARED}/fastchat_dummy_conversation/dummy_conversation.json",
                f"{SHARED}/llamafactory_glaive_toolcall_zh/glaive_toolcall_zh_demo.json", KTO]

GSM = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
       "How many clips did Natalia sell altogether in April and May?")  # 31 words
TRANSLATE = "Translate into German: the weather is lovely today and we should all go for a long walk"  # 17 words
ZH = "小明有五个苹果，他给了小红两个，又买了三个，现在他有几个苹果？"  # 27 Han characters: 27 words


@pytest.fixture(scope="module")
def shared_texts():
    texts = []
    for path in SHARED_FILES:
        with open(path, encoding="utf-8") as f:
            texts += [record_text(record) for record in json.load(f)]
    return texts


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "evals"
    folder.mkdir()
    with open(folder / "a_gsm.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"question": GSM, "answer": "72", "id": "gsm-0001"}) + "\n\n")
        f.write(json.dumps({"question": ZH, "answer": "6"}, ensure_ascii=False) + "\n")
    (folder / "b_chat.json").write_text(json.dumps([
        {"conversations": [{"from": "human", "value": TRANSLATE}, {"from": "gpt", "value": "Das Wetter ist schön."}]},
    ]), encoding="utf-8")
    table = pa.table({"prompt": ["Which planet in the solar system has the largest number of known moons?"],
                      "meta": [{"choices": ["Saturn", "Jupiter"], "source": "astronomy quiz"}]})
    pq.write_table(table, folder / "c_quiz.parquet")
    (folder / ".hidden.jsonl").write_text("this is not JSON\n", encoding="utf-8")
    (folder / "notes.txt").write_text("not an evaluation file\n", encoding="utf-8")
    return folder


# --- words ------------------------------------------------------------------------------------


def _words(text):
    hashes, offsets = word_hashes([text])
    assert offsets.tolist() == [0, len(hashes)]
    return hashes.tolist()


def test_normalisation_case_width_punctuation_and_spaceless_scripts():
    assert _words("Ｈｅｌｌｏ,\u3000WORLD!! ﬁne_tuning\t2024") == _words("hello world fine tuning 2024")
    assert len(_words("hello world fine tuning 2024")) == 5
    assert _words("Straße") == _words("STRASSE")
    assert len(_words("你好，世界")) == 4  # every Han character a word
    assert _words("abc") != _words("abd") and _words("ab c") != _words("abc")
    hashes, offsets = word_hashes(["one two", "", "...", "three"])
    assert offsets.tolist() == [0, 2, 2, 2, 3]
    long_word = "a" * 3000  # longer than the table of 1024 powers
    assert _words(f"x {long_word}b y")[1] == _words(f"{long_word}b")[0] != _words(f"{long_word}c")[0]


def test_strings_of_takes_values_at_any_depth_never_keys():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "n": 3, "ok": None}
    assert strings_of(record) == ["user", "text", "hi"]


# --- decontamination --------------------------------------------------------------------------


def test_questions_embedded_in_training_text_are_found_per_file(eval_dir, shared_texts):
    index = EvalIndex.from_paths([eval_dir], n=13)
    assert [os.path.basename(f) for f in index.files] == ["a_gsm.jsonl", "b_chat.json", "c_quiz.parquet"]
    # a: GSM (31 words: 19 grams) and ZH (27: 15 grams); b: TRANSLATE (17: 5 grams); c: the prompt (13: 1 gram)
    assert index.file_grams == [34, 5, 1]
    assert index.texts == [2, 1, 1]
    assert len(index.grams) == 40 and np.all(np.diff(index.grams.astype(np.float64)) >= 0)

    # Case, punctuation, whitespace, full-width digits and line breaks differ; embedded in a longer text.
    training = ("<|user|> Solve this one please:\n  NATALIA sold clips to ４８ of her friends in April -- and then "
                "she sold half as many clips in May!!!\nHow many clips did natalia sell altogether in april AND may? "
                "<|assistant|> 48 + 24 = 72")
    assert index.matches(training) == {0: 19}
    assert index.matches("现在问题是：小明有五个苹果,他给了小红两个;又买了三个。现在他有几个苹果?答案是六个。") == {0: 15}
    # Two files in one conversation, counted per file; the parquet prompt is exactly one 13-gram.
    both = f"{TRANSLATE.upper()} ... which planet in the Solar System has the LARGEST number of known moons"
    assert index.matches(both) == {1: 5, 2: 1}
    # A part of the question shorter than n words is not enough; unrelated real conversations match nothing.
    assert index.matches("Natalia sold clips to 48 of her friends in April, and then she") == {0: 1}  # 13 words
    assert index.matches("Natalia sold clips to 48 of her friends in April, and then") == {}  # 12 words
    assert index.matches(" ".join(reversed(GSM.split()))) == {}  # the same words in another order
    assert [index.matches(text) for text in shared_texts[:50] + shared_texts[-50:]] == [{}] * 100

    report = index.scan(iter([shared_texts[0], training, both, "nothing here"]), min_matches=1)
    assert report.flags.tolist() == [False, True, True, False]
    assert report.contaminated == 2 and report.texts == 4
    assert list(report.per_file.values()) == [1, 1, 1]
    assert report.examples[1] == {"index": 2, "grams": 6, "per_file": {index.files[1]: 5, index.files[2]: 1}}
    json.dumps(report.to_dict())
    # min_matches: the one-gram parquet match alone is no longer enough at 2.
    assert index.scan([f"x {both.split('...')[1]}", training], min_matches=2).flags.tolist() == [False, True]


def test_texts_shorter_than_n_are_one_gram_of_their_whole_sequence(tmp_path):
    short = "What is the boiling point of water at sea level?"  # 10 words < n = 13
    tiny = "Capital of France?"  # 3 words < min_words = 8: skipped
    (tmp_path / "short.jsonl").write_text(json.dumps({"q": short, "a": tiny}) + "\n", encoding="utf-8")
    index = EvalIndex.from_paths([tmp_path / "short.jsonl"], n=13, min_words=8)
    assert index.file_grams == [1] and index.texts == [1] and index.skipped == [1]
    assert index.short_lengths == [10]
    assert index.matches(f"Quick question. {short.upper()} I think it is 100 C.") == {0: 1}
    assert index.matches("what is the boiling point of water at sea") == {}  # 9 of its 10 words
    assert index.matches("what is the boiling point of milk at sea level") == {}
    assert index.matches("Name the capital of France? Paris.") == {}
    everything = EvalIndex.from_paths([tmp_path / "short.jsonl"], n=13, min_words=1)
    assert everything.skipped == [0] and everything.short_lengths == [3, 10]
    assert everything.matches("Name the capital of France? Paris.") == {0: 1}


@pytest.mark.parametrize("name, content, where", [
    ("bad.jsonl", '{"q": "fine"}\n\n{"q": "broken" \n', "bad.jsonl:3:"),
    ("bad.json", '[\n  {"q": "fine"},\n  {"q": "broken",}\n]\n', "bad.json:3:"),
    ("bad.parquet", "PAR1 not really parquet", "bad.parquet: not a readable Parquet file"),
])
def test_a_bad_evaluation_file_is_named_with_its_line(tmp_path, name, content, where):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(CollateError) as error:
        EvalIndex.from_paths([tmp_path])
    assert str(tmp_path / name) in str(error.value) and where in str(error.value)


def test_missing_and_unusable_paths_are_errors(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"q": "ok"}\n{"q": "caf\xe9"}\n')
    with pytest.raises(CollateError, match=r"latin1\.jsonl:2:"):
        EvalIndex.from_paths([tmp_path / "latin1.jsonl"])
    with pytest.raises(CollateError, match="no such evaluation file"):
        EvalIndex.from_paths([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollateError, match="no evaluation files"):
        EvalIndex.from_paths([tmp_path / "empty"])
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(CollateError, match="not an evaluation file"):
        EvalIndex.from_paths([tmp_path / "x.csv"])


# --- near-duplicates --------------------------------------------------------------------------


def _edited(text, changes, seed=0):
    rng = np.random.default_rng(seed)
    words = text.split()
    for k in rng.choice(len(words), size=changes, replace=False):
        words[k] = f"zq{k}x"
    return " ".join(words)


def _shingles(text, size=5):
    hashes, _ = word_hashes([text])
    return {tuple(hashes[i:i + size].tolist()) for i in range(max(1, len(hashes) - size + 1))}


def _jaccard(a, b):
    a, b = _shingles(a), _shingles(b)
    return len(a & b) / len(a | b)


def _counting(texts):
    """A generator over texts that records how far it was read."""
    read = []
    for text in texts:
        read.append(1)
        yield text
    read.append("end")
    _counting.read = read


def test_near_duplicates_cluster_an_edited_copy_with_its_original(shared_texts):
    long_ones = [i for i, text in enumerate(shared_texts) if text.isascii() and 120 <= len(text.split()) <= 250]
    original = long_ones[3]
    edited = _edited(shared_texts[original], 3)
    a, b = _shingles(shared_texts[original]), _shingles(edited)
    assert 0.75 < len(a & b) / len(a | b) < 0.95  # a few words changed: similar, not equal
    texts = shared_texts + [edited]
    result = near_duplicates(_counting(texts), threshold=0.7)
    assert _counting.read == [1] * len(texts) + ["end"]  # read once, to the end
    last = len(texts) - 1
    assert result.kept[last] == original and result.kept[original] == original  # the first is kept
    assert [original, last] in result.clusters
    assert abs(result.similarity[last] - len(a & b) / len(a | b)) < 0.12
    assert all(len(cluster) >= 2 and cluster == [cluster[0], *sorted(cluster[1:])] for cluster in result.clusters)
    # A different long text is not in that cluster; every duplicate found in the real sets (FastChat's
    # identity set repeats its answers) is truly similar to the text kept for it.
    assert result.kept[long_ones[4]] == long_ones[4]
    duplicates = np.flatnonzero(result.duplicates)
    assert 50 < len(duplicates) < 0.2 * len(texts)
    true = [_jaccard(texts[i], texts[result.kept[i]]) for i in duplicates]
    assert min(true) > 0.6 and np.mean(true) > 0.75
    # Priority is the caller's order: the edited copy first, it is kept and the original is its duplicate.
    swapped = near_duplicates(iter([edited, shared_texts[original], shared_texts[long_ones[4]]]), threshold=0.7)
    assert swapped.kept.tolist() == [0, 0, 2] and swapped.clusters == [[0, 1]]
    # Heavier edits fall below the threshold.
    far = _edited(shared_texts[original], len(shared_texts[original].split()) // 3, seed=1)
    assert near_duplicates([shared_texts[original], far], threshold=0.7).kept.tolist() == [0, 1]


def test_near_duplicates_keep_first_never_chains():
    base = " ".join(f"w{i}" for i in range(100))
    words = base.split()
    middle = " ".join(words[:90] + [f"m{i}" for i in range(10)])  # ~0.78 of base
    far = " ".join(words[:80] + [f"m{i}" for i in range(10)] + [f"f{i}" for i in range(10)])  # ~0.78 of middle
    result = near_duplicates([base, middle, far, "", "short text"], threshold=0.7)
    assert result.kept[1] == 0
    assert result.kept[2] in (0, 2)  # compared with the kept base only, never joined through `middle`
    assert result.kept[3] == 3 and result.kept[4] == 4  # a text without words is never a duplicate
    exact = near_duplicates(["Same words here.", "same WORDS, here", "other words here"], threshold=0.9)
    assert exact.kept.tolist() == [0, 0, 2] and exact.similarity[1] == 1.0


def test_a_duplicate_goes_to_the_first_kept_text_not_the_most_similar():
    shared = " ".join(f"w{i}" for i in range(130))
    first = shared + " " + " ".join(f"a{i}" for i in range(40))
    second = shared + " " + " ".join(f"b{i}" for i in range(40))
    both = shared + " " + " ".join(f"a{i}" for i in range(16)) + " " + " ".join(f"b{i}" for i in range(16, 40))
    assert _jaccard(first, second) < 0.65 and 0.7 < _jaccard(both, first) < _jaccard(both, second)
    result = near_duplicates([first, second, both], threshold=0.7, num_perm=512)
    assert result.kept.tolist() == [0, 1, 0] and result.clusters == [[0, 2]]


def test_near_duplicates_are_the_same_in_another_process(shared_texts):
    texts = shared_texts[:300] + [_edited(shared_texts[i], 2, seed=i) for i in range(100, 300, 7)]
    here = near_duplicates(iter(texts), threshold=0.7)
    again = near_duplicates(iter(texts), threshold=0.7, batch_chars=5000)  # batching changes nothing
    assert np.array_equal(here.kept, again.kept) and here.clusters == again.clusters
    script = (
        "import json, sys\n"
        "from collate_assets.core.pack.overlap import near_duplicates\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps(near_duplicates(texts, threshold=0.7).kept.tolist()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True,
                          env=env, check=True, timeout=60)
    assert json.loads(done.stdout) == here.kept.tolist()
    assert len(here.clusters) >= 20


def test_lsh_parameters_fit_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_parameters(threshold, 128)
        assert bands * rows <= 128
        # The S-curve's steepest point, (1 / bands) ** (1 / rows), sits near the threshold.
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1


def test_evaluation_files_may_be_compressed_as_input_files_are(tmp_path):
    import gzip

    import zstandard

    record = b'{"question": "What is the boiling point of water at sea level in degrees Celsius exactly?"}\n'
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n" + record))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(record))
    index = EvalIndex.from_paths([tmp_path])
    assert [p.rsplit("/", 1)[-1] for p in index.files] == ["a.jsonl.zst", "b.jsonl.gz"]
    text = "Quiz: what is the boiling point of water at sea level, in degrees Celsius exactly? 100."
    assert index.matches(text) == {0: 2, 1: 2}
