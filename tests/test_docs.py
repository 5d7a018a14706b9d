"""The documentation site builds strictly, and every registered method has its page and figure.

``mkdocs build --strict`` fails on a broken link or anchor, a docs page missing from the nav, and
(through docs/hooks.py) a registered optimizer, wrapper or tool without a page or a figure. The build
runs offline: the Material theme's fonts are off and no plugin downloads anything.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import adaptim

pytest.importorskip("mkdocs", reason="mkdocs is in the test extra")
pytest.importorskip("material", reason="mkdocs-material is in the test extra")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is in the test extra")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with ``--strict`` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _nav_links(site: Path) -> set[str]:
    """The pages the built site's navigation links to, as folders under the site ("." the index)."""
    index = (site / "index.html").read_text(encoding="utf-8")
    hrefs = re.findall(r'<a href="([^"#]+)" class="md-nav__link', index)
    return {html.unescape(h).rstrip("/") or "." for h in hrefs}


def _page_of(name: str, site: Path) -> Path:
    """The built page that documents registry entry ``name``."""
    info = adaptim.get(name)
    hooks = _hooks()
    if info.kind == "optimizer":
        source = hooks.FAMILY_PAGES.get(name, f"optimizers/{name}.md")
    else:
        heading = hooks.SECTION_OF[name][1]
        first = next(n for n, key in hooks.SECTION_OF.items() if key == hooks.SECTION_OF[name])
        stem = hooks.PAGE_NAMES.get(heading, first)
        source = f"{info.kind}s/{stem}.md"
    return site / source.removesuffix(".md") / "index.html"


@functools.cache
def _hooks() -> ModuleType:
    """docs/hooks.py, loaded under a name of its own."""
    spec = importlib.util.spec_from_file_location("adaptim_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_registered_entry_has_a_page_in_the_nav_with_its_record_and_figure(
    site: Path,
) -> None:
    nav = _nav_links(site)
    entries = adaptim.registry.registered()
    assert {i.kind for i in entries} == {"optimizer", "wrapper", "tool"}
    for info in entries:
        page = _page_of(info.name, site)
        assert page.is_file(), f"{info.kind} {info.name!r}: no page {page}"
        assert page.parent.relative_to(site).as_posix() in nav, (
            f"{info.name!r}: page not in the nav"
        )
        text = page.read_text(encoding="utf-8")
        assert f"Registry record: <code>{info.name}</code>" in text, info.name
        figure = f"figures/{info.name}.png"
        assert figure in text, f"{info.name!r}: its page does not show {figure}"
        assert (site / figure).stat().st_size < 30_000, f"{figure} is over 30 KB"
        assert info.cls.__name__ in text


def test_index_lists_every_registered_entry(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    for info in adaptim.registry.registered():
        assert f"<code>{info.name}</code>" in index, info.name


def test_claim_verdicts_are_those_of_claims_md(site: Path) -> None:
    from adaptim.bench.claims import CLAIMS

    claims_md = (ROOT / "docs" / "claims.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| ([a-z0-9-]+) \| (holds|does not hold) \|", claims_md, re.M))
    pages = "\n".join(p.read_text(encoding="utf-8") for p in site.rglob("index.html"))
    for claim in CLAIMS:
        if claim.name in recorded:
            shown = rf"<code>{re.escape(claim.name)}</code></a>: <strong>([a-z ]+)</strong>"
            verdicts = set(re.findall(shown, pages))
            assert verdicts == {recorded[claim.name]}, (claim.name, verdicts)


def test_the_nine_first_optimizers_have_written_pages() -> None:
    for name in (
        "adam",
        "adamw",
        "adamax",
        "radam",
        "adabelief",
        "diffgrad",
        "adamp",
        "sgdp",
        "adan",
    ):
        text = (ROOT / "docs" / "optimizers" / f"{name}.md").read_text(encoding="utf-8")
        for section in ("## Update rule", "## How it is verified", "## When to use it"):
            assert section in text, f"docs/optimizers/{name}.md lacks {section!r}"
        assert "$$" in text, f"docs/optimizers/{name}.md has no displayed math"
