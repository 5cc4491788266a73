"""Prompt sources: files, TFDS (array_record, prepared in the test without TensorFlow),
procedural tasks and `make_source`'s split rules."""

import dataclasses
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from jaxrl_lrm.config import DataSection
from jaxrl_lrm.data.sources import (
    JsonlSource,
    ListSource,
    ParquetSource,
    TaskSource,
    TfdsSource,
    gsm8k_final_answer,
    make_source,
    task_seed,
)

ROWS = [
    {"question": f"What is {i}+{i}?", "gold": 2 * i, "tests": [f"assert f({i})"]} for i in range(6)
]


def _expected(i):
    return {"prompt": f"What is {i}+{i}?", "answer": str(2 * i), "tests": [f"assert f({i})"]}


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    return path


@pytest.fixture
def parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def test_list_source():
    src = ListSource([{"prompt": "a", "answer": "1", "x": 0}, {"prompt": "b", "answer": 2}])
    assert len(src) == 2
    assert src[0] == {"prompt": "a", "answer": "1", "x": 0}
    assert src[-1] == {"prompt": "b", "answer": "2"}
    with pytest.raises(IndexError):
        src[2]
    with pytest.raises(
        ValueError,
        match=r"rows\[0\]: field 'answer' is missing; fields "
        r"present: \['prompt'\]",
    ):
        ListSource([{"prompt": "a"}])


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_file_sources(kind, jsonl, parquet):
    cls, path = (JsonlSource, jsonl) if kind == "jsonl" else (ParquetSource, parquet)
    src = cls(path, prompt_field="question", answer_field="gold")
    assert len(src) == 6
    assert [src[i] for i in range(6)] == [_expected(i) for i in range(6)]
    with pytest.raises(
        ValueError,
        match=rf"{path.name}.*field 'prompt' is missing; fields "
        r"present: \['gold', 'question', 'tests'\]",
    ):
        cls(path)[0]
    with pytest.raises(ValueError, match=rf"{kind} file .*nope.{kind}' does not exist"):
        cls(path.parent / f"nope.{kind}")


def test_jsonl_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: .* is not a JSON object"):
        JsonlSource(path)
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        JsonlSource(path)


# --------------------------------------------------------------------------- TFDS

GSM_ROWS = [
    ("Tom has 3 apples and buys 4. How many?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("A farm sells 1200 eggs a day. How many in 2 days?", "2 * 1200 = 2400\n#### 2,400"),
    ("Half of 10?", "10 / 2 = 5\n#### 5"),
]


class Gsm8k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A three-row stand-in with the real TFDS gsm8k builder's name, version and features."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        names = ["question", "answer", "annotation", "short_answer"]
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in names}),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(GSM_ROWS),
            "test": self._generate_examples(GSM_ROWS[:1]),
        }

    def _generate_examples(self, rows):
        for i, (q, a) in enumerate(rows):
            annotation, short = a.split("#### ")
            yield i, {"question": q, "answer": a, "annotation": annotation, "short_answer": short}


class JaxrlTinyQa(tfds.core.GeneratorBasedBuilder):
    """Generic fields with an int feature (registered, unlike `Gsm8k`)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "q": tfds.features.Text(),
                    "a": tfds.features.Text(),
                    "level": tfds.features.Scalar(dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            yield i, {"q": f"q{i}", "a": f"a{i}", "level": i}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    for cls in (Gsm8k, JaxrlTinyQa):
        cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow
    return data_dir


def test_gsm8k_answer_tail():
    assert gsm8k_final_answer("a\n#### 1,234 ") == "1234"
    assert gsm8k_final_answer("x #### 1 #### -5") == "-5"
    with pytest.raises(ValueError, match="no '#### <answer>' line"):
        gsm8k_final_answer("no marker")


def test_tfds_gsm8k_mapping(tfds_dir):
    assert sorted(p.name for p in (tfds_dir / "gsm8k" / "1.0.0").glob("*train.array_record*"))
    src = TfdsSource("gsm8k", tfds_dir, "train")
    assert len(src) == 3
    rows = sorted((src[i] for i in range(3)), key=lambda r: r["prompt"])  # TFDS shuffles
    expected = sorted(
        (
            {
                "prompt": q,
                "answer": a.rsplit("#### ", 1)[1].replace(",", ""),
                "solution": a,
                "annotation": a.split("#### ")[0],
                "short_answer": a.split("#### ")[1],
            }
            for q, a in GSM_ROWS
        ),
        key=lambda r: r["prompt"],
    )
    assert rows == expected
    assert [r["answer"] for r in rows] == ["2400", "5", "7"]
    assert all(isinstance(v, str) for r in rows for v in r.values())
    assert len(TfdsSource("gsm8k", tfds_dir, "test")) == 1
    assert len(TfdsSource("gsm8k", tfds_dir, "train[:2]")) == 2
    assert "tensorflow" not in sys.modules


def test_tfds_generic_fields(tfds_dir):
    src = TfdsSource("jaxrl_tiny_qa", tfds_dir, "train", prompt_field="q", answer_field="a")
    rows = sorted((src[i] for i in range(len(src))), key=lambda r: r["level"])
    assert rows == [{"prompt": f"q{i}", "answer": f"a{i}", "level": i} for i in range(5)]
    assert all(type(r["level"]) is int for r in rows)
    with pytest.raises(
        ValueError,
        match=r"field 'question' is missing; fields present: "
        r"\['a', 'level', 'q'\]",
    ):
        TfdsSource("jaxrl_tiny_qa", tfds_dir, "train", prompt_field="question", answer_field="a")


def test_tfds_missing_gives_prepare_command(tmp_path, tfds_dir):
    with pytest.raises(
        ValueError,
        match=r"(?s)'gsm8k'.*tfds build gsm8k --data_dir "
        r".*--file_format array_record",
    ):
        TfdsSource("gsm8k", tmp_path, "train")
    with pytest.raises(ValueError, match="(?s)does not exist.*tfds build gsm8k"):
        TfdsSource("gsm8k", tmp_path / "nope", "train")
    with pytest.raises(ValueError, match=r"(?s)'jaxrl_tiny_qa' is not prepared.*tfds build"):
        TfdsSource("jaxrl_tiny_qa", tmp_path, "train")  # a registered builder, no data here
    with pytest.raises(ValueError, match=r"split 'validation' .*Unknown split 'validation'"):
        TfdsSource("gsm8k", tfds_dir, "validation")
    assert not any((tmp_path / d).exists() for d in ("gsm8k", "downloads"))  # nothing fetched


# --------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class CountConfig:
    scale: int = 1


def _count_generate(n, seed, config):
    """A fake task: rows derived from (seed, i) so that the seed stream is visible."""
    return [{"prompt": f"{seed}:{i}", "answer": str(config.scale * i)} for i in range(n)]


@pytest.fixture
def fake_tasks(monkeypatch):
    """A stand-in registry with the real one's shape (`Task.config`, `Task.generate`)."""
    from jaxrl_lrm.data import tasks

    task = types.SimpleNamespace(name="count", config=CountConfig, generate=_count_generate)
    monkeypatch.setattr(tasks, "get_task", lambda name: {"count": task}[name])


def test_task_source(fake_tasks):
    src = TaskSource("count", 4, 9, scale=3)
    assert [src[i] for i in range(4)] == [
        {"prompt": f"9:{i}", "answer": str(3 * i)} for i in range(4)
    ]
    with pytest.raises(ValueError, match=r"task_args=\{'bogus': 1\} do not fit task 'count'"):
        TaskSource("count", 1, 0, bogus=1)


def test_make_source_task_streams(fake_tasks):
    data = DataSection(source="task", task="count", task_args={"train_size": 7}, eval_size=3)
    train, ev = make_source(data, "train", seed=1), make_source(data, "eval", seed=1)
    assert (len(train), len(ev)) == (7, 3)
    assert task_seed(1, "train") != task_seed(1, "eval")
    assert train[0]["prompt"] == f"{task_seed(1, 'train')}:0"
    assert ev[0]["prompt"] == f"{task_seed(1, 'eval')}:0"
    assert not {train[i]["prompt"] for i in range(7)} & {ev[i]["prompt"] for i in range(3)}
    with pytest.raises(ValueError, match="split='test'"):
        make_source(data, "test")


def test_task_source_real_registry():
    from jaxrl_lrm.data.tasks import TASKS, get_task

    for name in sorted(TASKS):
        task = get_task(name)
        src = TaskSource(name, 5, 3)
        assert [src[i] for i in range(5)] == task.generate(5, 3, task.config())
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        TaskSource("nope", 1, 0)


def test_addition_falls_back_to_demo_task():
    from jaxrl_lrm.data.demo import AdditionTask

    src = TaskSource("addition", 4, 7, digits=2)
    assert [src[i] for i in range(4)] == AdditionTask(digits=2).generate(4, 7)
    assert len(src[0]["prompt"]) == 6 and src[0]["prompt"].endswith("=")
    data = DataSection(eval_size=5)  # the default config: source="task", task="addition"
    ev = make_source(data, "eval", seed=0)
    assert [ev[i] for i in range(5)] == AdditionTask().generate(5, task_seed(0, "eval"))
    assert len(make_source(data, "train", seed=0)) == 10_000


# --------------------------------------------------------------------------- make_source


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_make_source_files_hold_out_tail(kind, jsonl, parquet):
    path = jsonl if kind == "jsonl" else parquet
    data = DataSection(
        source=kind, path=str(path), prompt_field="question", answer_field="gold", eval_size=2
    )
    train, ev = make_source(data, "train"), make_source(data, "eval")
    assert [train[i] for i in range(len(train))] == [_expected(i) for i in range(4)]
    assert [ev[i] for i in range(len(ev))] == [_expected(i) for i in range(4, 6)]
    sep = DataSection(
        source=kind,
        path=str(path),
        eval_split=str(path),
        prompt_field="question",
        answer_field="gold",
    )
    assert len(make_source(sep, "train")) == len(make_source(sep, "eval")) == 6
    too_big = DataSection(
        source=kind, path=str(path), prompt_field="question", answer_field="gold", eval_size=6
    )
    with pytest.raises(ValueError, match="eval_size=6 is not smaller than the 6 rows"):
        make_source(too_big, "train")


def test_make_source_tfds(tfds_dir):
    data = DataSection(source="tfds", name="gsm8k", path=str(tfds_dir), eval_size=1)
    train, ev = make_source(data, "train"), make_source(data, "eval")
    full = TfdsSource("gsm8k", tfds_dir, "train")
    assert [train[i] for i in range(2)] == [full[0], full[1]] and [ev[0]] == [full[2]]
    sep = DataSection(source="tfds", name="gsm8k", path=str(tfds_dir), eval_split="test")
    assert (len(make_source(sep, "train")), len(make_source(sep, "eval"))) == (3, 1)
    with pytest.raises(ValueError, match="data.name=None"):
        make_source(DataSection(source="tfds", path=str(tfds_dir)), "train")
