"""exporters/README.md lists every value the ``reason`` label of gpuhub_spawn_refusals_total can take."""

from __future__ import annotations

import re
from pathlib import Path

from quota.policy import Rule

README = Path(__file__).resolve().parents[2] / "exporters" / "README.md"


def expected_block() -> str:
    rows = [f"| `{r.id}` | {r.status} |" for r in Rule]
    return "\n".join(["| `reason` (rule id) | HTTP status |", "| --- | --- |", *rows])


def test_readme_lists_every_rule_id_with_its_status():
    text = README.read_text()
    m = re.search(r"<!-- rule-ids:begin -->\n(.*?)\n<!-- rule-ids:end -->", text, re.S)
    assert m, "exporters/README.md has no <!-- rule-ids:begin --> ... <!-- rule-ids:end --> block"
    assert m.group(1).strip() == expected_block(), (
        "the rule table in exporters/README.md is out of date; replace the block with:\n" + expected_block()
    )
