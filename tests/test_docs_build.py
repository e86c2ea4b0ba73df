"""The documentation builds as a static site, without a single warning.

``mkdocs build --strict`` with the repository's ``mkdocs.yml``: broken links and anchors,
pages missing from the navigation and navigation entries without a page are all
warnings there, and strict mode makes any warning fail the build.  The hooks of
``docs/_mkdocs/hooks.py`` (code block titles, links to files outside ``docs/``) are
tested on their own below.

MkDocs is part of the test extra.  Without it the build test is skipped, except under
``CI=true``, where it fails: CI must build the docs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOKS = DOCS / "_mkdocs" / "hooks.py"


def _require_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            "mkdocs is not installed (it is part of the test extra); CI must build the docs"
        )
    pytest.skip("mkdocs is not installed (pip install mkdocs, or the test extra)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from ``mkdocs.yml`` into a temporary directory."""
    _require_mkdocs()
    site_dir = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    problems = [line for line in output.splitlines() if re.match(r"(WARNING|ERROR)\b", line)]
    assert not problems, "mkdocs reported:\n" + "\n".join(problems)
    return site_dir


def test_docs_build_strict_without_warnings(site: Path) -> None:
    assert (site / "index.html").is_file()


def test_every_page_is_built(site: Path) -> None:
    pages = sorted(p.relative_to(DOCS) for p in DOCS.rglob("*.md"))
    assert pages
    missing = [str(p) for p in pages if not (site / p.with_suffix(".html")).is_file()]
    assert not missing, f"pages not built: {missing}"


def test_code_blocks_are_rendered(site: Path) -> None:
    """A fence Python-Markdown did not understand shows up as literal backticks."""
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "```" not in text, f"{page.relative_to(site)}: unrendered code fence"
        assert "title=" not in re.sub(r'title="[^"]*"', "", text), (
            f"{page.relative_to(site)}: a code block title was not turned into a caption"
        )


def test_no_links_leave_the_site(site: Path) -> None:
    """Relative links to files outside docs/ would be broken on the site."""
    for page in site.rglob("*.html"):
        for href in re.findall(r'href="([^"#]+)', page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:|/", href):
                continue
            target = (page.parent / href).resolve()
            assert target.is_relative_to(site.resolve()), (
                f"{page.relative_to(site)}: {href} leaves the site"
            )
            assert target.exists(), f"{page.relative_to(site)}: {href} does not exist"


# -- the hooks ------------------------------------------------------------------------------


def _hooks() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("docs_mkdocs_hooks", HOOKS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page(src_path: str) -> Any:
    return types.SimpleNamespace(file=types.SimpleNamespace(src_path=src_path))


def _render(markdown: str, src_path: str = "running.md", **config: Any) -> str:
    hooks = _hooks()
    result: str = hooks.on_page_markdown(
        markdown, _page(src_path), {"docs_dir": str(DOCS), **config}, None
    )
    return result


def test_hook_turns_a_fence_title_into_a_caption() -> None:
    out = _render("x\n\n```text title=pythonfilter.conf\ngreylist\n```\n")
    assert out == (
        'x\n\n<p class="code-title"><code>pythonfilter.conf</code></p>\n\n```text\ngreylist\n```\n'
    )
    assert _render("```python\n```text title=x\n```\n") == "```python\n```text title=x\n```\n"


def test_hook_links_outside_docs_without_repo_url() -> None:
    text = "[`examples/`](../examples/) and [the unit](../examples/pythonfilter.service)"
    assert _render(text) == "`examples/` and the unit (`examples/pythonfilter.service`)"
    inside = "[configuration.md](configuration.md#pythonfilterconf) [x](https://a.example/)"
    assert _render(inside) == inside
    missing = "[gone](../examples/no-such-file)"
    assert _render(missing) == missing  # left for MkDocs to report


def test_hook_links_outside_docs_with_repo_url() -> None:
    text = "[`examples/`](../../examples/), [t](../../tests/test_docs_build.py#L1)"
    out = _render(text, "filters/dns.md", repo_url="https://git.example/o/r/", extra={})
    assert out == (
        "[`examples/`](https://git.example/o/r/tree/HEAD/examples/), "
        "[t](https://git.example/o/r/blob/HEAD/tests/test_docs_build.py#L1)"
    )
    tagged = _render(
        "[s](../scripts/serve)", repo_url="https://git.example/o/r", extra={"repo_ref": "v1.0"}
    )
    assert tagged == "[s](https://git.example/o/r/blob/v1.0/scripts/serve)"
