"""The README shows the committed screenshot of the chat page (``docs/page.png``, which
``scripts/screenshot_page.py`` writes: ``tests/scripts/test_screenshot_page.py``)."""

from __future__ import annotations

from tests.support.schemas import ROOT


def test_the_readme_shows_the_committed_screenshot() -> None:
    assert "![The chat page](docs/page.png)" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
