"""The browser tests' fixtures (tests/browser/kit.py)."""

from tests.browser.kit import browser  # noqa: F401 - one chromium per test module
