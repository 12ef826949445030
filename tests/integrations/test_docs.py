"""The examples of docs/integrations.md run as they are (each checks its own numbers with asserts)."""
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
NEEDS = {"lightning": ("lightning",), "transformers": ("transformers", "accelerate")}


def test_the_doc_has_its_four_examples():
    assert len(BLOCKS) == 4
    assert sum("CTFCallback" in b for b in BLOCKS) == 2 and sum("PruneCallback" in b for b in BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, monkeypatch, capsys):
    code = BLOCKS[index]
    for marker, modules in NEEDS.items():
        if f"import torch, {marker}" in code:
            for module in modules:
                pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{DOC.name}[{index}]", "exec"), {"__name__": f"integrations_doc_{index}"})
    assert capsys.readouterr().out.strip()  # each example prints what it got
