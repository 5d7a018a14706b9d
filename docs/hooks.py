"""MkDocs hooks: the parts of the site that come from the registry, so that they cannot go stale.

``mkdocs.yml`` names this file under ``hooks:``. At every build it

* puts an **Optimizers** section in the nav with one page per registered optimizer's page
  (``docs/optimizers/<name>.md``, or the family page in :data:`FAMILY_PAGES`), and a **Wrappers**
  and a **Tools** section with one page per wrapper and per tool. Those pages are generated from
  the sections of ``docs/wrappers.md`` and ``docs/tools.md`` (each ``## `` section of ``tools.md``,
  and the sections :data:`SECTION_OF` names in ``wrappers.md``), so their text has one source;
* appends to each of those pages the **registry record** of every entry it documents (class, paper,
  reference code, what it is verified against, the defaults read from the signature, the verdicts of
  its claims in ``docs/claims.md``'s last recorded run, and its figure from ``docs/figures/``), at the
  page's ``<!-- registry-record -->`` marker, or at its end;
* fills the table of ``docs/index.md`` (at ``<!-- registry-index -->``) from the registry.

A registered entry with no page, no figure or no section is an error (a warning, which
``mkdocs build --strict`` turns into a failure), and so is a claim whose section is missing.
"""

from __future__ import annotations

import inspect
import logging
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify
from mkdocs.structure.files import File, Files

import adaptim
from adaptim.bench.claims import CLAIMS
from adaptim.bench.claims_common import _find
from adaptim.registry import OptimInfo, registered

log = logging.getLogger("mkdocs.hooks.adaptim")

#: registered optimizers documented on a family page rather than on ``optimizers/<name>.md``
FAMILY_PAGES = {
    "adaiv2": "optimizers/adai.md",
    "adapnm": "optimizers/pnm.md",
    "ahb_adam": "optimizers/adaptive_hb.md",
    "ahb_sgd": "optimizers/adaptive_hb.md",
    "avgrad": "optimizers/mada.md",
    "koala_m": "optimizers/koala.md",
    "koala_v": "optimizers/koala.md",
    "ncg_sgd": "optimizers/ncg_momentum.md",
}

#: the section of ``wrappers.md`` / ``tools.md`` that documents each registered wrapper and tool
SECTION_OF = {
    "lookahead": ("wrappers.md", "Lookahead"),
    "iterate_averaging": ("wrappers.md", "Iterate averaging (Gadam)"),
    "activelr": ("wrappers.md", "ActiveLR"),
    "adadagrad": ("tools.md", "Adaptive batch sizes (AdAdaGrad, AdAdaGrad-Norm)"),
    "adadagradnorm": ("tools.md", "Adaptive batch sizes (AdAdaGrad, AdAdaGrad-Norm)"),
}

#: short file names of the generated pages (else the registry name of the section's first entry, or
#: its heading as a slug)
PAGE_NAMES = {
    "GradInit": "gradinit",
    "lr scaling with the batch size": "lr_scaling",
    "Momentum scaling with the learning rate": "momentum_scaling",
    "Lanczos spectrum and the lr/momentum learner": "lanczos",
}

#: tools outside the registry (plain functions) whose claims (``ToolClaim``) belong to a section
TOOL_MODULE_SECTIONS = {
    "adaptim.tools.gradinit": "GradInit",
    "adaptim.tools.lr_scaling": "lr scaling with the batch size",
    "adaptim.tools.momentum_scaling": "Momentum scaling with the learning rate",
}

#: modules a ``ToolClaim`` may need that document no method: their claims (training dynamics, all
#: run with torch.optim.Adam) are shown on Adam's page
GENERAL_CLAIM_MODULES = {"torch.nn.functional", "adaptim.bench.diagnostics"}
GENERAL_CLAIM_PAGE = "optimizers/adam.md"

RECORD_MARKER = "<!-- registry-record -->"
INDEX_MARKER = "<!-- registry-index -->"
CLAIMS_PAGE = "claims.md"
FIGURES = "figures"


@dataclass
class SectionPage:
    """A generated page holding one ``## `` section of an overview page."""

    source: str  # "tools.md"
    heading: str
    uri: str  # "tools/gradinit.md"
    markdown: str = ""
    names: list[str] = field(default_factory=list)


@dataclass
class Site:
    """Everything the hooks computed from the registry at ``on_config``."""

    docs_dir: Path
    page_of: dict[str, str]  # registry name -> page
    sections: list[SectionPage]
    claims_of_page: dict[str, list[str]]  # page -> claim names
    verdicts: dict[str, str]  # claim name -> verdict of the last recorded run
    claim_anchors: dict[str, str]  # claim name -> anchor in claims.md


_site: Site | None = None


# -- reading the overview pages --------------------------------------------------------------------


def _sections(markdown: str) -> dict[str, str]:
    """The ``## `` sections of a page (heading -> text, heading line included); fences respected."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    fence = ""
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if fence:
            if stripped.startswith(fence):
                fence = ""
        elif stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif line.startswith("## "):
            current = out.setdefault(line[3:].strip(), [])
        elif line.startswith("# "):
            current = None
        if current is not None:
            current.append(line)
    return {heading: "\n".join(lines) + "\n" for heading, lines in out.items()}


def _promote(section: str, source: str, uri: str) -> str:
    """A section as a page of its own: headings one level up, relative links re-based."""
    lines, fence = [], ""
    for line in section.splitlines():
        stripped = line.lstrip()
        if fence:
            if stripped.startswith(fence):
                fence = ""
        elif stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif re.match(r"#{2,6} ", line):
            line = line[1:]
        lines.append(line)
    up = posixpath.relpath(posixpath.dirname(source) or ".", posixpath.dirname(uri))

    def rebase(match: re.Match[str]) -> str:
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match.group(0)
        if target.startswith("#"):  # an anchor of the overview page
            return f"]({posixpath.join(up, posixpath.basename(source))}{target}"
        return f"]({posixpath.join(up, target)}"

    return re.sub(r"\]\(([^)\s]+)", rebase, "\n".join(lines) + "\n")


def _claims_of_last_run(claims_md: str) -> tuple[dict[str, str], dict[str, str]]:
    """From ``claims.md``: each claim's verdict in the table of the last run, and its section's anchor."""
    verdicts = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"^\| ([a-z0-9-]+) \| (holds|does not hold|skipped|error) \|", claims_md, re.M
        )
    }
    anchors = {}
    for m in re.finditer(r"^### (.+)$", claims_md, re.M):
        heading = m.group(1).strip()
        names, _, _ = heading.partition(":")
        for name in re.findall(r"[a-z0-9]+(?:-[a-z0-9.]+)+", names):
            anchors[name] = slugify(heading, "-")
    return verdicts, anchors


# -- the hooks ---------------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    """Build the registry's part of the nav; remember what the other hooks need."""
    global _site
    docs = Path(config.docs_dir)
    page_of: dict[str, str] = {}
    for info in registered():
        if info.kind == "optimizer":
            page_of[info.name] = FAMILY_PAGES.get(info.name, f"optimizers/{info.name}.md")
            if not (docs / page_of[info.name]).is_file():
                log.warning(
                    f"registered optimizer {info.name!r} has no page: write docs/{page_of[info.name]} "
                    "(or name its family page in docs/hooks.py FAMILY_PAGES)"
                )
        elif info.name not in SECTION_OF:
            log.warning(
                f"registered {info.kind} {info.name!r} has no page: give it a section in "
                f"docs/{info.kind}s.md and name it in docs/hooks.py SECTION_OF"
            )
        if not (docs / FIGURES / f"{info.name}.png").is_file():
            log.warning(
                f"registered {info.kind} {info.name!r} has no figure: run "
                f".venv/bin/python docs/gen_figures.py {info.name}"
            )

    sections: list[SectionPage] = []
    by_heading: dict[tuple[str, str], SectionPage] = {}
    for source in ("wrappers.md", "tools.md"):
        found = _sections((docs / source).read_text(encoding="utf-8"))
        wanted = [h for s, h in SECTION_OF.values() if s == source]
        for heading in wanted if source == "wrappers.md" else list(found):
            if heading not in found:
                log.warning(
                    f"docs/{source} has no section '## {heading}' (docs/hooks.py SECTION_OF)"
                )
                continue
            if (source, heading) in by_heading:
                continue
            first = [n for n, key in SECTION_OF.items() if key == (source, heading)][:1]
            stem = PAGE_NAMES.get(heading) or (first[0] if first else slugify(heading, "_"))
            uri = f"{source[:-3]}/{stem}.md"
            page = SectionPage(source, heading, uri, _promote(found[heading], source, uri))
            by_heading[source, heading] = page
            sections.append(page)
    for name, key in SECTION_OF.items():
        if key in by_heading:
            by_heading[key].names.append(name)
            page_of[name] = by_heading[key].uri

    verdicts, anchors = _claims_of_last_run((docs / CLAIMS_PAGE).read_text(encoding="utf-8"))
    claims_of_page: dict[str, list[str]] = {}
    for claim in CLAIMS:
        page = _claim_page(claim, page_of, by_heading)
        if page is None and claim.needs[0].partition(":")[0] in GENERAL_CLAIM_MODULES:
            page = GENERAL_CLAIM_PAGE
        if page is None:
            log.warning(f"claim {claim.name!r}: none of {claim.needs} has a page")
            continue
        claims_of_page.setdefault(page, []).append(claim.name)
        if claim.name not in anchors:
            log.warning(
                f"claim {claim.name!r} has no '### {claim.name}: ...' section in docs/claims.md"
            )
    _site = Site(docs, page_of, sections, claims_of_page, verdicts, anchors)

    optimizer_pages: dict[str, list[OptimInfo]] = {}
    for info in registered("optimizer"):
        optimizer_pages.setdefault(page_of[info.name], []).append(info)
    nav_optimizers = [
        {", ".join(i.cls.__name__ for i in infos): page}
        for page, infos in sorted(
            optimizer_pages.items(), key=lambda kv: kv[1][0].cls.__name__.lower()
        )
    ]
    nav_wrappers = [{"All wrappers on one page": "wrappers.md"}]
    nav_tools = [{"All tools on one page": "tools.md"}]
    for page in sections:
        (nav_wrappers if page.source == "wrappers.md" else nav_tools).append(
            {page.heading: page.uri}
        )
    nav = list(config.nav or [])
    at = 1 if nav else 0  # after Home
    nav[at:at] = [{"Optimizers": nav_optimizers}, {"Wrappers": nav_wrappers}, {"Tools": nav_tools}]
    config.nav = nav
    return config


def _claim_page(claim: Any, page_of: dict[str, str], by_heading: dict) -> str | None:
    """The page a claim is shown on: that of the first entry it needs."""
    need = claim.needs[0]
    if ":" in need:  # a ToolClaim's "module:function"
        heading = TOOL_MODULE_SECTIONS.get(need.partition(":")[0])
        page = by_heading.get(("tools.md", heading))
        return page.uri if page else None
    info = _find(need)
    return page_of.get(info.name) if info else None


def on_files(files: Files, config: Any) -> Files:
    """Add the generated wrapper and tool pages."""
    assert _site is not None
    for page in _site.sections:
        files.append(File.generated(config, page.uri, content=page.markdown))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill the index's table; append the registry records to each method's page."""
    assert _site is not None
    uri = page.file.src_uri
    if uri == "index.md":
        if INDEX_MARKER not in markdown:
            log.warning(f"docs/index.md lost its {INDEX_MARKER} marker")
        return markdown.replace(INDEX_MARKER, index_table(_site, uri))
    names = [info.name for info in registered() if _site.page_of.get(info.name) == uri]
    claims = _site.claims_of_page.get(uri, [])
    if not names and not claims:
        return markdown
    record = "\n".join(registry_record(adaptim.get(name), _site, uri) for name in names)
    if claims:
        record += claims_block(claims, _site, uri, "Claims" if names else "## Claims")
    if RECORD_MARKER in markdown:
        return markdown.replace(RECORD_MARKER, record)
    return markdown.rstrip() + "\n\n" + record


# -- what the hooks write ------------------------------------------------------------------------


def _link(site_uri: str, target: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(site_uri) or ".")


def _github_links(text: str) -> str:
    return re.sub(
        r"github\.com/([\w.-]+/[\w.-]+?)(?=[@ /;,)]|$)",
        lambda m: f"[{m.group(1)}](https://github.com/{m.group(1)})",
        text,
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    if value is inspect.Parameter.empty or type(value).__name__ == "_RequiredParameter":
        return "required"
    return f"`{value!r}`"


def registry_record(info: OptimInfo, site: Site, uri: str) -> str:
    """The generated facts of one entry, as markdown for the page ``uri``."""
    public = getattr(adaptim, info.cls.__name__, None) is info.cls
    where = (
        f"adaptim.{info.cls.__name__}" if public else f"{info.cls.__module__}.{info.cls.__name__}"
    )
    rows = [
        (
            "name",
            f"`{info.name}`" + (f" (aliases: {', '.join(info.aliases)})" if info.aliases else ""),
        ),
        ("class", f"`{where}`"),
        ("kind", info.kind),
        ("paper", f"[{_cell(info.paper)}]({info.paper_url})"),
        ("reference code", _cell(_github_links(info.reference))),
        ("verified against", _cell(info.verified or "the conformance suite")),
    ]
    out = [f"## Registry record: `{info.name}`", ""]
    out.append(
        "*Generated from `adaptim.get(" + repr(info.name) + ")` when the site is built "
        "(docs/hooks.py).*"
    )
    out += ["", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    defaults = info.defaults
    if defaults:
        out += [
            "**Defaults** (read from the signature):",
            "",
            "| argument | default |",
            "|---|---|",
        ]
        out += [f"| `{k}` | {_default(v)} |" for k, v in defaults.items()]
        out.append("")
    out += [  # collapsed: its parameter table repeats the defaults above, with their meaning
        f'??? note "API of `{where}` (its docstring, rendered by mkdocstrings)"',
        "",
        f"    ::: {info.cls.__module__}.{info.cls.__name__}",
        "",
    ]
    figure = _link(uri, f"{FIGURES}/{info.name}.png")
    what = f"{info.name}(Adam)" if info.kind == "wrapper" else info.name
    out += [
        f"![{what} on the bench's Rosenbrock task]({figure})",
        "",
        f"*{what} on the bench's `rosenbrock` task (seed 0, from (-1.5, 2), 1000 steps) at the "
        "bench's three learning rates around the registry's `tuned_lr`; the thick line is the rate the "
        "bench picks. Drawn by `docs/gen_figures.py` with the bench's own runs; the PNG is committed.*",
        "",
    ]
    return "\n".join(out)


def claims_block(claims: list[str], site: Site, uri: str, heading: str = "Claims") -> str:
    """The verdicts of the page's claims, linked to their sections in ``claims.md``."""
    page = _link(uri, CLAIMS_PAGE)
    lines = [
        f"{heading if heading.startswith('#') else '## ' + heading}",
        "",
        f"Verdicts of the last recorded run of `adaptim bench --suite claims` ([the claims]({page})):",
        "",
    ]
    for name in claims:
        verdict = site.verdicts.get(name, "not in the last recorded run")
        anchor = site.claim_anchors.get(name)
        target = f"{page}#{anchor}" if anchor else page
        lines.append(f"- [`{name}`]({target}): **{verdict}**")
    return "\n".join(lines) + "\n"


def index_table(site: Site, uri: str) -> str:
    """Every registered entry: its page, paper, what it is verified against, its claims' verdicts."""
    claims_by_page = site.claims_of_page
    lines = [
        "| name | class | kind | paper | verified against | claims |",
        "|---|---|---|---|---|---|",
    ]
    for info in registered():
        page = site.page_of.get(info.name)
        name = f"[`{info.name}`]({_link(uri, page)})" if page else f"`{info.name}`"
        verdicts = sorted(
            {site.verdicts.get(c, "not run") for c in claims_by_page.get(page or "", [])}
        )
        lines.append(
            f"| {name} | `{info.cls.__name__}` | {info.kind} | "
            f"[{_cell(info.paper)}]({info.paper_url}) | {_cell(info.verified or 'conformance suite')} | "
            f"{', '.join(verdicts) or '-'} |"
        )
    return "\n".join(lines)
