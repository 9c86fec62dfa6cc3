"""The README's generated parts stay true."""

import re
from pathlib import Path

from tokencodec.adapters.support import matrix_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_support_matrix_in_readme_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- support-matrix -->\n(.*?)<!-- /support-matrix -->", text, re.S)
    assert found, "README.md lacks the support-matrix markers"
    assert found.group(1) == matrix_markdown(), "run: python -m tokencodec.adapters.support"


def test_readme_has_the_ci_blocks():
    text = README.read_text(encoding="utf-8")
    assert "<!-- ci:setup -->" in text and "<!-- ci:test -->" in text


def test_the_source_tree_has_no_import_circles():
    # every import counts, the ones inside functions too (scripts/architecture_facts.py reads them with ast)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "architecture_facts.py"
    spec = importlib.util.spec_from_file_location("architecture_facts", path)
    facts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(facts)
    found = facts.facts()
    assert found["module_circles"] == [] and found["package_circles"] == []
    assert "tokencodec.models" not in found["package_imports"]["tokencodec.adapters"]   # adapters hook, never import nets
