"""MkDocs hooks for the courier-pyfilter documentation (``hooks:`` in ``mkdocs.yml``).

The Markdown files are written to read well on a code-hosting site as they are, and
``tests/test_docs_examples.py`` relies on their form; these hooks adapt two things for
the built site, before MkDocs renders and validates each page:

* **Code block titles.**  ``tests/test_docs_examples.py`` ties a block to a file with an
  info string such as ```` ```python title=examples/filters/tag_header.py ````.
  Python-Markdown's ``fenced_code`` does not accept anything after the language, so the
  title is moved to a caption above the block and the fence keeps only its language.
* **Links to repository files outside ``docs/``** (``../examples/...``,
  ``../scripts/serve``; the repository is the directory that holds ``docs/``) work when
  the Markdown is read in the repository but have no target in the site.  A link whose
  target exists is rewritten to the file on the repository host when ``repo_url`` is set
  (``blob``/``tree`` URLs of the revision ``extra.repo_ref``, ``HEAD`` by default),
  otherwise it becomes its link text (plus the path, when the text does not show it).
  Links to missing files are left alone, so MkDocs still reports them.
"""

from __future__ import annotations

import html
import posixpath
import re
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
TITLE = re.compile(r"\btitle=(?P<title>\S+)")
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite fence info strings and out-of-docs links of one page."""
    docs_dir = Path(config["docs_dir"]).resolve()
    repo_root = docs_dir.parent
    page_dir = (docs_dir / page.file.src_path).parent
    out: list[str] = []
    closing: str | None = None
    for line in markdown.split("\n"):
        if closing is not None:
            out.append(line)
            if line.strip().startswith(closing) and not line.strip().strip(closing[0]):
                closing = None
            continue
        fence = FENCE.match(line)
        if fence:
            indent, closing = fence.group("indent"), fence.group("fence")
            info = fence.group("info").strip()
            lang = "" if "=" in info.split(" ")[0] else info.split(" ")[0]
            title = TITLE.search(info)
            if title:
                caption = html.escape(title.group("title"))
                out.append(f'{indent}<p class="code-title"><code>{caption}</code></p>')
                out.append("")
            out.append(f"{indent}{closing}{lang}")
            continue
        out.append(
            LINK.sub(lambda m: _outside_link(m, page_dir, docs_dir, repo_root, config), line)
        )
    return "\n".join(out)


def _outside_link(
    link: re.Match[str], page_dir: Path, docs_dir: Path, repo_root: Path, config: Any
) -> str:
    target = link.group("target")
    if SCHEME.match(target) or target.startswith("/"):
        return link.group(0)
    path = (page_dir / target).resolve()
    if path.is_relative_to(docs_dir) or not path.is_relative_to(repo_root) or not path.exists():
        return link.group(0)
    relative = path.relative_to(repo_root).as_posix() + ("/" if path.is_dir() else "")
    text = link.group("text")
    repo_url = config.get("repo_url")
    if repo_url:
        ref = (config.get("extra") or {}).get("repo_ref", "HEAD")
        kind = "tree" if path.is_dir() else "blob"
        url = posixpath.join(repo_url.rstrip("/"), kind, ref, relative)
        return f"[{text}]({url}{link.group('anchor') or ''})"
    if relative.rstrip("/") in text.replace("`", ""):
        return text
    return f"{text} (`{relative}`)"
