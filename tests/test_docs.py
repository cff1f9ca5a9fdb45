"""The documentation: the README and the MkDocs site under docs/.

- The site builds with ``mkdocs build --strict`` (as `make docs` builds it): ``mkdocs.yml``'s
  ``validation:`` turns each broken link, missing anchor, absolute link and page left out of the
  navigation into a warning, and strict fails on any. It loads nothing from another origin.
- The README's links into docs/ resolve, file and anchor (the README is not a page of the site),
  and every heading has the same anchor on GitHub and in the site, so relative links work on both.
- What the docs say matches what the code has: every policy example parses and every whole
  policy among them loads; docs/policy/reference.md lists exactly the keys of the policy's JSON Schema;
  docs/reference/cli.md exactly the commands and options of `spangate`. (The settings, metrics and
  `/readyz` tables are checked against a running gateway in tests/test_gateway.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as `make docs` builds it, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_strictly_and_loads_nothing_from_another_origin(site: Path) -> None:
    """Offline: no web fonts, scripts or stylesheets from a CDN (links to other sites are fine)."""
    pages = sorted(site.rglob("*.html"))
    assert pages
    external = re.compile(
        r"""<(?:script|img|iframe)[^>]*\ssrc=["']?(?:https?:)?//"""
        r"""|<link[^>]*\shref=["']?(?:https?:)?//"""
    )
    for page in pages:
        loaded = external.findall(page.read_text(encoding="utf-8"))
        assert not loaded, f"{page.relative_to(site)} loads {loaded} from another origin"


# --- Links from the README, and anchors that work on GitHub and in the site alike -------------

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def _prose(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _heading_text(raw: str) -> str:
    """A heading's text as rendered: links by their text, no code or emphasis markers."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    return text.replace("`", "").replace("**", "").replace("*", "")


def _github_slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _site_slug(text: str) -> str:
    """MkDocs' anchor for a heading (Python-Markdown's toc extension, as mkdocs.yml uses it)."""
    from markdown.extensions.toc import slugify

    return str(slugify(text, "-"))


def _anchors(page: Path) -> set[str]:
    return {
        _site_slug(_heading_text(m.group(2)))
        for line in _prose(page.read_text(encoding="utf-8"))
        if (m := HEADING.match(line))
    }


def _pages() -> list[Path]:
    return sorted((REPO / "docs").rglob("*.md"))


def test_every_heading_has_one_anchor_on_github_and_in_the_site() -> None:
    """A link to `page.md#anchor` must work on GitHub and in the built site: both derive the
    anchor from the heading, each its own way, so headings are kept to text where they agree, and
    unique within their page (a repeated heading gets a different suffix on each)."""
    for page in [REPO / "README.md", *_pages()]:
        seen: set[str] = set()
        for line in _prose(page.read_text(encoding="utf-8")):
            if (m := HEADING.match(line)) is None:
                continue
            text = _heading_text(m.group(2))
            site, github = _site_slug(text), _github_slug(text)
            where = f"{page.relative_to(REPO)}: {m.group(0)!r}"
            assert site == github, f"{where}: anchor #{site} in the site, #{github} on GitHub"
            assert site not in seen, f"{where}: a second heading with anchor #{site}"
            seen.add(site)


def test_every_link_of_the_readme_resolves() -> None:
    """The README links into docs/ by relative paths: each names a file that exists, and its
    anchor, if any, a heading of that page (`mkdocs build --strict` checks the links between pages;
    the README is not one)."""
    readme = REPO / "README.md"
    links = [
        target
        for line in _prose(readme.read_text(encoding="utf-8"))
        for target in LINK.findall(line)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = (readme.parent / path) if path else readme
        assert target.is_file(), f"README.md links to {link}: no such file"
        assert REPO in target.resolve().parents, f"README.md links to {link}, outside the repository"
        if anchor:
            assert anchor in _anchors(target), f"README.md links to {link}: no such heading"


# --- The docs agree with the policy schema, the loader and the command line ---------------------


def _yaml_blocks(page: Path) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


POLICY_KEYS = {
    "version", "spanner", "issuers", "identities", "roles", "queries", "routes", "budgets", "audit",
}  # fmt: skip
CASES_KEYS = {"policy", "cases"}


def test_every_policy_example_parses_and_every_whole_policy_loads(tmp_path: Path) -> None:
    """An example a reader copies must work: each YAML block of a policy or of policy test cases
    (its top-level keys are a policy's) parses, and each that is a whole policy (it has
    `version:`) loads and compiles as `spangate serve` would load it. Other YAML (Kubernetes
    manifests, chart values, templates) is not this test's business."""
    import yaml

    from gateway.policy.compiled import compile_policy
    from gateway.policy.load import load_policy

    env = {"OKTA_CLIENT_ID": "gateway", "OKTA_CLIENT_SECRET": "s3cret"}
    policies = 0
    for page in [REPO / "README.md", *_pages()]:
        for n, block in enumerate(_yaml_blocks(page)):
            where = f"{page.relative_to(REPO)}, YAML block {n + 1}"
            keys = set(re.findall(r"^([A-Za-z_]+):", block, re.M))
            if not keys or not (keys <= POLICY_KEYS or keys <= CASES_KEYS):
                continue
            data = yaml.safe_load(block)
            assert isinstance(data, dict), where
            if "version" in data:
                policies += 1
                path = tmp_path / f"{page.stem}-{n}.yaml"
                path.write_text(block, encoding="utf-8")
                assert compile_policy(load_policy(path, env=env)).model.routes, where
    assert policies >= 2  # the README's minimal policy, the annotated format in docs/policy/


# Where each object of the policy's JSON Schema is documented, key by key, in docs/policy/reference.md.
SCHEMA_SECTIONS = {
    None: "Top level",
    "SpannerTarget": "Spanner",
    "Issuer": "Issuers",
    "ClaimNames": "Issuer claims",
    "Introspection": "Introspection",
    "Identity": "Identities",
    "Role": "Roles",
    "RoleEntry": "Role entries",
    "ClaimTest": "Claim tests",
    "Query": "Queries",
    "Param": "Parameters",
    "Staleness": "Staleness",
    "Mask": "Masks",
    "Pagination": "Pagination",
    "PageSize": "Page size",
    "Route": "Routes",
    "Approval": "Approval",
    "Budget": "Budgets",
    "Audit": "Audit",
    "FileSink": "File sink",
    "StdoutSink": "Stdout sink",
    "SpannerSink": "Spanner sink",
}


def _sections(page: Path) -> dict[str, list[str]]:
    """A page's prose lines under each heading's text (any level), up to the next heading."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in _prose(page.read_text(encoding="utf-8")):
        if m := HEADING.match(line):
            current = sections.setdefault(_heading_text(m.group(2)), [])
        else:
            current.append(line)
    return sections


def _first_column(lines: list[str]) -> set[str]:
    """The backticked names in the first column of the table rows among ``lines``."""
    return {
        name
        for line in lines
        if line.startswith("| `")
        for name in re.findall(r"`([^`]+)`", line.split("|")[1])
    }


def test_every_key_of_the_policy_schema_is_documented() -> None:
    """docs/policy/reference.md lists, per object, exactly the keys policies/policy.schema.json
    (`make schema`) has: a key added to the model and not to the page, or the reverse, fails."""
    import json

    schema = json.loads((REPO / "policies" / "policy.schema.json").read_text(encoding="utf-8"))
    objects = {name: d for name, d in schema["$defs"].items() if "properties" in d}
    assert set(objects) == set(SCHEMA_SECTIONS) - {None}, "a schema object has no section"
    sections = _sections(REPO / "docs" / "policy" / "reference.md")
    for name, heading in SCHEMA_SECTIONS.items():
        keys = set((schema if name is None else objects[name])["properties"])
        assert heading in sections, f"docs/policy/reference.md has no section {heading!r}"
        assert _first_column(sections[heading]) == keys, f"section {heading!r} against {name}"


def _commands() -> dict[str, list[str]]:
    """Each leaf command of `spangate` (`policy test`) with its option strings (`--json`)."""
    import argparse

    from gateway.cli import _parser

    found: dict[str, list[str]] = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if words and not subcommands:
            found[" ".join(words)] = [
                option
                for action in parser._actions
                if not isinstance(action, argparse._HelpAction)
                for option in action.option_strings
            ]
        for action in subcommands:
            for name, sub in action.choices.items():
                walk(sub, (*words, name))

    walk(_parser(), ())
    return found


def test_the_cli_reference_names_every_command_and_option() -> None:
    """docs/reference/cli.md has a section per command, whose table names exactly its options."""
    commands = _commands()
    assert {"serve", "policy test", "audit verify"} <= set(commands)
    sections = _sections(REPO / "docs" / "reference" / "cli.md")
    documented = {h.removeprefix("spangate ") for h in sections if h.startswith("spangate ")}
    assert documented == set(commands)
    for command, options in commands.items():
        table = _first_column(sections[f"spangate {command}"])
        assert table == set(options), f"spangate {command}: the page has {table}, the CLI {options}"


# --- The README's performance table quotes the published run ----------------------------------

LATEST = REPO / "bench" / "results" / "latest.md"
README_TARGETS = {  # the README's columns of requests a second, by the run's target names
    "spangate": "spangate gateway",
    "raw client, threads": "raw client, threads",
    "raw unary": "raw unary ExecuteSql",
    "hand-written FastAPI": "hand-written FastAPI",
}


def _table_rows(text: str, first: str) -> list[list[str]]:
    """The cells of the Markdown rows that start with ``| first``."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first}")
    ]


def test_the_readme_quotes_the_published_benchmark() -> None:
    """Every number of the README's performance table is the published run's (latest.md), rounded
    as the README rounds it, and names its commit: republishing updates the README too."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    latest = LATEST.read_text(encoding="utf-8")
    section = readme.split("## Performance\n", 1)[1].split("\n## ", 1)[0]
    commit = re.search(r"spangate ([0-9a-f]{7,})", latest)
    assert commit is not None and f"spangate {commit.group(1)[:7]}" in section
    head = next(line for line in section.splitlines() if line.startswith("| callers"))
    columns = [cell.strip() for cell in head.strip().strip("|").split("|")]
    rows = [row for row in _table_rows(section, "") if row[0].isdigit()]
    assert {row[0] for row in rows} == {"8", "32"}
    cells = {(row[0], row[1]): row for row in _table_rows(latest, "") if len(row) > 6}
    for row in rows:
        conc = row[0]
        for label, target in README_TARGETS.items():
            index = next(i for i, c in enumerate(columns) if c.startswith(label))
            assert row[index] == f"{cells[(target, conc)][2]} req/s", (label, conc)
        gateway = cells[("spangate gateway", conc)]
        p50, p99 = (float(gateway[4]), float(gateway[5]))
        assert row[-2] == f"{p50:.1f} / {p99:.1f} ms", conc
        assert row[-1] == f"{float(gateway[6]):.2f} ms", conc
