"""Assembles README.md from docs/_readme_head.md and the section files in docs/ (run from the
repository root: `python docs/build_readme.py`). Edit the sections, not README.md."""

from pathlib import Path

ORDER = ["_readme_head.md", "models.md", "sampling.md", "losses.md", "rewards_math.md",
         "rewards_code_tasks.md", "rewards_model_based.md", "data.md", "_algorithms.md",
         "alignment.md", "benchmarks.md", "notebooks_tpu.md", "_dev.md"]


def main() -> None:
    docs = Path(__file__).resolve().parent
    parts = [(docs / name).read_text().strip() + "\n" for name in ORDER]
    (docs.parent / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
