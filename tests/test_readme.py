"""The README's registry table is generated; this keeps it in sync (ADAPTIM_UPDATE_README=1 rewrites)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import adaptim  # noqa: F401  (imports register everything)
from adaptim.registry import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- registry:begin -->\n)(.*?)(<!-- registry:end -->)", re.S)


def test_readme_registry_table_is_current():
    text = README.read_text()
    assert BLOCK.search(text), "README has no registry block"
    expected = BLOCK.sub(lambda m: m.group(1) + markdown_table() + "\n" + m.group(3), text)
    if os.environ.get("ADAPTIM_UPDATE_README") == "1":
        README.write_text(expected)
        text = expected
    assert text == expected, (
        "README's table is stale: run ADAPTIM_UPDATE_README=1 pytest tests/test_readme.py"
    )
