"""The documentation's own checks, without building the site (CI builds it with
`mkdocs build --strict`, which runs them on every page).

- The docs hook finds Python internals (`__dataclass_fields__`, `__match_args__`,
  ...) on a rendered API page, and `mkdocs.yml` filters them out.
- The site needs no network: MathJax is served from `docs/_static`, not a CDN.
"""

import importlib.util
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _hook():
    path = ROOT / "docs" / "_hooks" / "lapsample_docs.py"
    spec = importlib.util.spec_from_file_location("lapsample_docs_hook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_finds_dataclass_internals():
    hook = _hook()
    page = (
        '<h4 id="lapsample.SampleResults">SampleResults</h4>'
        '<h5 id="lapsample.SampleResults.__init__">__init__</h5>'
        '<h5 id="lapsample.SampleResults.to_arviz">to_arviz</h5>'
        '<h5 id="lapsample.SampleResults.__match_args__">__match_args__</h5>'
        '<h5 id="lapsample.Sampler.__call__">__call__</h5>'
        '<h5 id="lapsample.CheckpointError.__weakref__">__weakref__</h5>'
        '<a href="#lapsample.SampleResults.__match_args__">again</a>'
    )
    assert hook.dunder_members(page) == [
        "lapsample.SampleResults.__match_args__",
        "lapsample.CheckpointError.__weakref__",
    ]
    assert hook.dunder_members('<h4 id="lapsample.sample">sample</h4>') == []


def test_mkdocstrings_filters_out_dunders():
    config = (ROOT / "mkdocs.yml").read_text()
    match = re.search(r"^\s*filters:\s*(\[.*\])\s*$", config, re.M)
    assert match, "mkdocs.yml sets no mkdocstrings `filters`"
    patterns = [p.strip().strip('"') for p in match.group(1)[1:-1].split(",")]
    excluded = [re.compile(p[1:]) for p in patterns if p.startswith("!")]

    def shown(name):
        return not any(p.search(name) for p in excluded)

    for name in ("__dataclass_fields__", "__match_args__", "__weakref__", "_private"):
        assert not shown(name), name
    for name in ("__init__", "__call__", "to_arviz", "phi"):
        assert shown(name), name


def test_math_is_served_with_the_site():
    config = (ROOT / "mkdocs.yml").read_text()
    scripts = re.search(r"extra_javascript:\n((?:\s+(?:-|#).*\n)+)", config).group(1)
    assert "http" not in re.sub(r"#.*", "", scripts), "a script comes from a CDN"
    for script in re.findall(r"-\s*(\S+)", scripts):
        assert (ROOT / "docs" / script).is_file(), script
    fonts = ROOT / "docs" / "_static" / "mathjax" / "output" / "chtml" / "fonts"
    assert (fonts / "woff-v2" / "MathJax_Main-Regular.woff").is_file()
