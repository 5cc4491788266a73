"""Prompt sources: random-access sequences of row dicts with `prompt` and `answer`.

A `PromptSource` has `__len__` and `__getitem__(i) -> dict`; every row holds `"prompt"` (the
question, not yet templated) and `"answer"`, plus the dataset's other columns (for example
`tests` or `solution`), which reward functions receive as keyword arguments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jaxrl_lrm.data.templates import check_messages


class PromptSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict: ...


def _index(i: int, n: int, what: str) -> int:
    i = int(i)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for {what} of {n} rows")
    return i % n


def _rename(row: dict, prompt_field: str, answer_field: str, where: str) -> dict:
    """Maps `prompt_field` -> "prompt" and `answer_field` -> "answer", keeping other columns."""
    for field in (prompt_field, answer_field):
        if field not in row:
            raise ValueError(f"{where}: field {field!r} is missing; fields present: {sorted(row)}")
    out = {k: v for k, v in row.items() if k not in (prompt_field, answer_field)}
    out["prompt"] = row[prompt_field]
    answer = row[answer_field]
    # Numeric answers (`"answer": 42` in a JSON file) become text, as reward functions expect.
    if isinstance(answer, int | float | np.integer | np.floating) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is None:
        raise ValueError(
            f"{where}: field {answer_field!r} is null; expected the gold answer (a string or a "
            "number): fill it in or drop the row"
        )
    out["answer"] = answer
    if not isinstance(out["prompt"], str):
        check_messages(out["prompt"], f"{where}: {prompt_field}")
    return out


class ListSource:
    """Rows held in memory; each must have `prompt` and `answer`."""

    def __init__(
        self,
        rows: Sequence[dict],
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        *,
        where: str = "rows",
    ):
        self.rows = [
            _rename(dict(r), prompt_field, answer_field, f"{where}[{i}]")
            for i, r in enumerate(rows)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return dict(self.rows[_index(i, len(self.rows), "ListSource")])


def _check_file(path: str | Path, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{kind} file {str(path)!r} does not exist")
    return path


class JsonlSource(ListSource):
    """One JSON object per line (blank lines skipped), read eagerly."""

    def __init__(
        self, path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer"
    ):
        path = _check_file(path, "jsonl")
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{str(path)!r} line {lineno}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{str(path)!r} line {lineno}: {row!r} is not a JSON object")
                rows.append(
                    _rename(row, prompt_field, answer_field, f"{str(path)!r} line {lineno}")
                )
        self.path = path
        self.rows = rows


class ParquetSource:
    """A Parquet file read with pyarrow; rows are converted on access."""

    def __init__(
        self, path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer"
    ):
        import pyarrow.parquet as pq

        self.path = _check_file(path, "parquet")
        self.table = pq.read_table(self.path)
        names = self.table.column_names
        for field in (prompt_field, answer_field):
            if field not in names:
                raise ValueError(
                    f"{str(self.path)!r}: field {field!r} is missing; fields "
                    f"present: {sorted(names)}"
                )
        self.prompt_field, self.answer_field = prompt_field, answer_field
        if self.table.column(answer_field).null_count:  # refused at load, not when drawn
            first = self.table.column(answer_field).to_pylist().index(None)
            self[first]

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        i = _index(i, len(self), "ParquetSource")
        row = self.table.slice(i, 1).to_pylist()[0]
        return _rename(row, self.prompt_field, self.answer_field, f"{str(self.path)!r} row {i}")


# --------------------------------------------------------------------------- TFDS


def _to_python(x: Any) -> Any:
    """TFDS values to plain Python: bytes -> str, numpy scalars/arrays -> numbers/lists."""
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.ndarray):
        return (
            [_to_python(v) for v in x.tolist()]
            if x.dtype == object
            else (x.item() if x.ndim == 0 else x.tolist())
        )
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _to_python(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_python(v) for v in x]
    return x


def gsm8k_final_answer(solution: str) -> str:
    """The text after the last `####` of a GSM8K solution, thousands separators removed."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution {solution[-80:]!r} has no '#### <answer>' line")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _map_gsm8k(row: dict) -> dict:
    """GSM8K: `question` -> prompt, the `#### 42` tail -> answer, full text -> `solution`."""
    out = {k: v for k, v in row.items() if k not in ("question", "answer")}
    out["prompt"] = row["question"]
    out["solution"] = row["answer"]
    out["answer"] = gsm8k_final_answer(row["answer"])
    return out


# Built-in field mappings: dataset name -> (fields that must exist, row mapping).
KNOWN_TFDS = {"gsm8k": (("question", "answer"), _map_gsm8k)}


def tfds_prepare_hint(name: str, data_dir: str | Path) -> str:
    return (
        f"prepare it on a machine with network access, in array_record format, then copy "
        f"the directory here:\n  tfds build {name} --data_dir {data_dir} "
        f"--file_format array_record\nor in Python:\n  tfds.builder({name!r}, "
        f"data_dir={str(data_dir)!r}, file_format='array_record').download_and_prepare()"
    )


class TfdsSource:
    """A prepared TFDS dataset read through `tfds.data_source` (array_record; never downloads).

    Works without TensorFlow installed. For names in `KNOWN_TFDS` (GSM8K) the built-in field
    mapping applies when `prompt_field` / `answer_field` are left as None or "prompt" /
    "answer"; other names use the given fields like `JsonlSource`.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | Path,
        split: str,
        prompt_field: str | None = None,
        answer_field: str | None = None,
    ):
        import tensorflow_datasets as tfds

        self.name, self.data_dir, self.split = name, Path(data_dir), split
        base = name.split(":")[0].split("/")[0]
        known = KNOWN_TFDS.get(base)
        if known and prompt_field in (None, "prompt") and answer_field in (None, "answer"):
            required, self._map = known
        else:
            pf, af = prompt_field or "prompt", answer_field or "answer"
            required = (pf, af)
            self._map = lambda row: _rename(row, pf, af, f"TFDS {name!r} split {split!r}")
        if not self.data_dir.is_dir():
            raise ValueError(
                f"TFDS data_dir {str(self.data_dir)!r} does not exist; "
                + tfds_prepare_hint(base, self.data_dir)
            )
        prepared = self.data_dir / name.split(":")[0]
        if not (prepared.is_dir() and any(prepared.rglob("dataset_info.json"))):
            raise ValueError(
                f"TFDS dataset {name!r} is not prepared in "
                f"{str(self.data_dir)!r} (no {str(prepared)!r} with a "
                "dataset_info.json); " + tfds_prepare_hint(base, self.data_dir)
            )
        try:
            self.ds = tfds.data_source(
                name, data_dir=str(self.data_dir), split=split, download=False
            )
        except NotImplementedError as e:  # prepared, but as TFRecord: no random access
            raise ValueError(
                f"TFDS dataset {name!r} in {str(self.data_dir)!r} is not in "
                f"array_record format ({str(e).splitlines()[0]}); "
                + tfds_prepare_hint(base, self.data_dir)
            ) from None
        except Exception as e:  # DatasetNotFoundError, AssertionError (no files), bad split...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            bad_split = "split" in first.lower() and "DatasetNotFound" not in type(e).__name__
            raise ValueError(
                f"TFDS dataset {name!r} split {split!r} is not available in "
                f"{str(self.data_dir)!r} ({type(e).__name__}: {first})"
                + ("" if bad_split else "; " + tfds_prepare_hint(base, self.data_dir))
            ) from None
        features = getattr(getattr(self.ds, "dataset_info", None), "features", None)
        if features is not None and hasattr(features, "keys"):
            present = sorted(features.keys())
            for field in required:
                if field not in present:
                    raise ValueError(
                        f"TFDS dataset {name!r} in {str(self.data_dir)!r}: field "
                        f"{field!r} is missing; fields present: {present}"
                    )

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return self._map(_to_python(self.ds[_index(i, len(self), f"TFDS {self.name!r}")]))


# --------------------------------------------------------------------------- tasks


def _task_generator(name: str, task_args: dict):
    """`(n, seed) -> rows` for the task `name` configured with `task_args`.

    Uses `jaxrl_lrm.data.tasks.get_task(name)`: a `Task` whose `config` class takes the
    `task_args` and whose `generate(n, seed, config)` makes the rows (or a class / object with
    `generate(n, seed)`). "addition" falls back to the demo's `AdditionTask` when the registry
    does not hold it.
    """
    from jaxrl_lrm.data import tasks

    try:
        task = tasks.get_task(name)
    except ValueError:
        if name not in ("addition", "tool_multiply"):
            raise
        from jaxrl_lrm.data import demo, demo_tools

        task = demo.AdditionTask if name == "addition" else demo_tools.ToolMultiplyTask
    try:
        if isinstance(task, type):
            return task(**task_args).generate
        config_cls = getattr(task, "config", None)
        if isinstance(config_cls, type):
            config = config_cls(**task_args)
            return lambda n, seed: task.generate(n, seed, config)
    except TypeError as e:
        raise ValueError(f"data.task_args={task_args!r} do not fit task {name!r}: {e}") from None
    if task_args:
        raise ValueError(f"data.task_args={task_args!r}: task {name!r} takes no arguments")
    return task.generate


class TaskSource(ListSource):
    """`n` rows of a procedural task (`jaxrl_lrm.data.tasks.get_task`) from `seed`."""

    def __init__(self, task: str, n: int, seed: int, **task_args):
        if n < 0:
            raise ValueError(f"n={n!r}: expected >= 0 rows")
        self.task = task
        generate = _task_generator(task, task_args)
        super().__init__(generate(n, seed), where=f"task {task!r} rows")


class SliceSource:
    """Rows `[start, stop)` of another source."""

    def __init__(self, source: PromptSource, start: int, stop: int):
        if not 0 <= start <= stop <= len(source):
            raise ValueError(
                f"slice [{start}, {stop}) is not inside a source of {len(source)} rows"
            )
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict:
        return self.source[self.start + _index(i, len(self), "SliceSource")]


# --------------------------------------------------------------------------- from config

SPLITS = ("train", "eval")
TASK_TRAIN_SIZE = 10_000  # rows of a procedural task's train split unless task_args.train_size


def task_seed(seed: int, split: str) -> int:
    """Independent generator seeds for the train and eval streams of a procedural task."""
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


def _held_out(full: PromptSource, split: str, eval_size: int, where: str) -> PromptSource:
    n = len(full)
    if eval_size >= n:
        raise ValueError(
            f"data.eval_size={eval_size} is not smaller than the {n} rows of "
            f"{where}; lower it or set data.eval_split"
        )
    return (
        SliceSource(full, 0, n - eval_size)
        if split == "train"
        else SliceSource(full, n - eval_size, n)
    )


def make_source(data, split: str, *, seed: int = 0) -> PromptSource:
    """Builds the train or eval source that a `DataSection` describes.

    Rules:
      - source="task": `TaskSource(data.task, n, task_seed(seed, split), **task_args)`, with
        `n = task_args.train_size` (default 10,000) for "train" and `data.eval_size` for
        "eval"; the two splits come from independent seed streams.
      - source="tfds": `data.split` of `data.name` in `data.path`; with `data.eval_split` the
        eval source is that split, else the last `data.eval_size` rows of `data.split` are the
        eval source and removed from train.
      - source="jsonl"/"parquet": the file `data.path`; `data.eval_split`, when given, is the
        path of a separate eval file of the same kind, else the last `data.eval_size` rows are
        held out as above.

    Args:
      data: a `DataSection`.
      split: "train" or "eval".
      seed: the run's seed (only procedural tasks use it).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if data.source == "task":
        args = dict(data.task_args)
        train_size = int(args.pop("train_size", TASK_TRAIN_SIZE))
        n = train_size if split == "train" else data.eval_size
        return TaskSource(data.task, n, task_seed(seed, split), **args)
    if data.source == "tfds":
        if data.name is None:
            raise ValueError("data.name=None: expected a TFDS dataset name for source='tfds'")
        open_split = lambda s: TfdsSource(
            data.name, data.path, s, data.prompt_field, data.answer_field
        )
        if data.eval_split is not None:
            return open_split(data.split if split == "train" else data.eval_split)
        return _held_out(
            open_split(data.split),
            split,
            data.eval_size,
            f"TFDS {data.name!r} split {data.split!r}",
        )
    if data.source in ("jsonl", "parquet"):
        cls = JsonlSource if data.source == "jsonl" else ParquetSource
        if data.eval_split is not None:
            return cls(
                data.path if split == "train" else data.eval_split,
                data.prompt_field,
                data.answer_field,
            )
        return _held_out(
            cls(data.path, data.prompt_field, data.answer_field),
            split,
            data.eval_size,
            repr(str(data.path)),
        )
    raise ValueError(
        f"data.source={data.source!r}: expected one of 'task', 'jsonl', 'parquet', 'tfds'"
    )
