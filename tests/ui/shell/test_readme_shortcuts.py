"""The README's keyboard table is the one the viewer binds its keys from."""

from pathlib import Path

from ui.shortcuts import shortcuts_markdown

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_shortcut_table_matches_the_bound_shortcuts():
    text = README.read_text()
    start = text.index("<!-- shortcuts:start -->") + len("<!-- shortcuts:start -->")
    end = text.index("<!-- shortcuts:end -->")
    assert text[start:end].strip() == shortcuts_markdown().strip(), (
        "README shortcuts are stale: regenerate with "
        "python -c 'from ui.shortcuts import shortcuts_markdown; print(shortcuts_markdown())'"
    )
