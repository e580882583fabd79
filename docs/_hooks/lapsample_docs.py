"""MkDocs hooks of the lapsample documentation.

- **API coverage.** Every public name of `lapsample` (the `Name as Name` re-exports in
  `src/lapsample/__init__.py`) must be documented with `::: lapsample.Name` on a page
  under `docs/api/`; otherwise the build fails with a message naming what is missing.
- **No Python internals on API pages.** An API page that documents a dunder
  attribute other than `__init__` and `__call__` (`__dataclass_fields__`,
  `__match_args__`, `__weakref__`, ... with the builtins' docstrings) fails the build;
  the `filters` option of mkdocstrings in `mkdocs.yml` keeps them out.
- **Excerpts of repository files.** A line `<!-- include: PATH -->` in a page is
  replaced by the Markdown file PATH (relative to the repository root) without its
  title; `<!-- include: PATH#Heading -->` by the section whose heading starts with
  "Heading" (without the heading). Headings are shifted so that the excerpt's top level
  is `###`, and relative links become plain text (they point into the repository, not
  the site). Numbers measured once and written in a committed file are therefore never
  copied by hand.
"""

import ast
import pathlib
import re

from mkdocs.exceptions import PluginError


ROOT = pathlib.Path(__file__).resolve().parents[2]
INIT = ROOT / "src" / "lapsample" / "__init__.py"

_DIRECTIVE = re.compile(r"^\s*:::\s+lapsample\.([A-Za-z_][A-Za-z0-9_]*)\s*$", re.M)
_INCLUDE = re.compile(r"^<!--\s*include:\s*([^#\s]+)(?:#(.+?))?\s*-->\s*$", re.M)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
# The anchor mkdocstrings gives a documented member: `id="lapsample.Name.member"`.
_MEMBER_ID = re.compile(r'id="(lapsample(?:\.[A-Za-z_][A-Za-z0-9_]*)+)"')
_ALLOWED_DUNDERS = {"__init__", "__call__"}
_RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#|mailto:)[^)]*\)")


def public_names() -> set[str]:
    """The names `lapsample/__init__.py` re-exports as `Name as Name`."""
    tree = ast.parse(INIT.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname is not None and alias.asname == alias.name:
                    names.add(alias.name)
    return names


def documented_names(api_dir: pathlib.Path) -> set[str]:
    names = set()
    for page in api_dir.glob("**/*.md"):
        names.update(_DIRECTIVE.findall(page.read_text()))
    return names


def on_config(config):
    api_dir = pathlib.Path(config["docs_dir"]) / "api"
    missing = sorted(public_names() - documented_names(api_dir))
    if missing:
        raise PluginError(
            "These public names of lapsample have no API entry: "
            + ", ".join(missing)
            + ". Add `::: lapsample.<Name>` for each to a page in docs/api/ (an ABC "
            "inside a `??? abstract` block listing its abstract members; a concrete "
            "class with `members: [__init__]`)."
        )
    return config


def dunder_members(html: str) -> list[str]:
    """The documented members in a rendered page that are Python internals: dunders
    other than `__init__` and `__call__`, e.g.
    `lapsample.SampleResults.__match_args__`."""
    found = []
    for path in _MEMBER_ID.findall(html):
        last = path.rsplit(".", 1)[-1]
        is_dunder = last.startswith("__") and last.endswith("__")
        if is_dunder and last not in _ALLOWED_DUNDERS and path not in found:
            found.append(path)
    return found


def on_page_content(html, page, config, files):
    if page.file.src_uri.startswith("api/"):
        internals = dunder_members(html)
        if internals:
            raise PluginError(
                f"{page.file.src_uri} documents Python internals: "
                + ", ".join(internals)
                + ". Keep them out with the `filters` option of mkdocstrings in "
                "mkdocs.yml, or list the page's `members:` explicitly."
            )
    return html


def _lines_outside_fences(lines):
    """Yields `(line, is_outside_a_code_fence)`."""
    fenced = False
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            yield line, False
        else:
            yield line, not fenced


def excerpt(path: str, heading: str | None) -> str:
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"Cannot include `{path}`: no such file in the repository.")
    lines = list(_lines_outside_fences(file.read_text().splitlines()))
    if heading is None:
        # The whole file, less a leading title.
        if lines and lines[0][1] and re.match(r"^#\s", lines[0][0]):
            lines = lines[1:]
        body = lines
    else:
        start = level = None
        for i, (line, outside) in enumerate(lines):
            match = _HEADING.match(line) if outside else None
            if match and match.group(2).startswith(heading.strip()):
                start, level = i + 1, len(match.group(1))
                break
        if start is None:
            raise PluginError(f"`{path}` has no heading starting with `{heading}`.")
        body = []
        for line, outside in lines[start:]:
            match = _HEADING.match(line) if outside else None
            if match and len(match.group(1)) <= level:
                break
            body.append((line, outside))
    levels = [
        len(m.group(1))
        for line, outside in body
        if outside and (m := _HEADING.match(line))
    ]
    shift = 3 - min(levels) if levels else 0
    out = []
    for line, outside in body:
        match = _HEADING.match(line) if outside else None
        if match:
            depth = min(6, max(1, len(match.group(1)) + shift))
            line = "#" * depth + " " + match.group(2)
        if outside:
            line = _RELATIVE_LINK.sub(r"\1", line)
        out.append(line)
    return "\n".join(out).strip() + "\n"


def on_page_markdown(markdown, page, config, files):
    return _INCLUDE.sub(lambda m: excerpt(m.group(1), m.group(2)), markdown)
