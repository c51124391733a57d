"""docs/: the recipe reference is what the schema generates; the CLI reference covers every subcommand; the index
links the other docs and every link resolves."""
import re
from pathlib import Path

from pipeline.cli import _parser
from pipeline.docgen import render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_recipe_reference_in_sync_with_schema():
    assert (DOCS / "recipe.md").read_text() == render(), \
        "docs/recipe.md is stale: run `python -m pipeline.docgen > docs/recipe.md`"


def test_recipe_reference_covers_every_field():
    from pipeline.docgen import reachable
    from pipeline.recipe import Recipe

    text = render()
    for cls in reachable(Recipe):
        assert f"## {cls.__name__}" in text
        for name in cls.model_fields:
            assert f"| `{name}` |" in text, f"{cls.__name__}.{name}"


def test_cli_reference_covers_every_subcommand():
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    text = (DOCS / "cli.md").read_text()
    assert set(sub.choices) >= {"run", "validate", "stages", "status", "reward", "eval", "report", "export"}
    for cmd, sp in sub.choices.items():
        assert f"## pipeline {cmd}" in text, cmd
        for action in sp._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in text, f"pipeline {cmd} {opt}"


def test_index_links_every_doc_and_links_resolve():
    index = (DOCS / "index.md").read_text()
    for name in ("quickstart.md", "concepts.md", "recipe.md", "cli.md"):
        assert f"({name})" in index
    for doc in ("index.md", "quickstart.md", "concepts.md", "cli.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", (DOCS / doc).read_text()):
            assert (DOCS / target).exists(), f"{doc} links to missing {target}"
