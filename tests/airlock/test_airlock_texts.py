"""Every automatic check's rule id has a sentence on the airlock page (gpuhub/hub/airlock_texts.py), translated into
Korean: a new rule in quota/disclosure.py or quota/airlock_store.py fails here until it gets one."""

from __future__ import annotations

import re
from pathlib import Path

from gpuhub.hub import airlock_texts as texts
from gpuhub.hub import i18n

ROOT = Path(__file__).resolve().parents[2]
RULE_AT = re.compile(r'(?:Finding\(|c\.add\(|yield )\s*"([a-z]+(?:-[a-z]+)*)"')


def emitted_rules() -> set[str]:
    found = set()
    for path in ("quota/disclosure.py", "quota/airlock_store.py"):
        found |= set(RULE_AT.findall((ROOT / path).read_text(encoding="utf-8")))
    return found


def test_every_rule_the_checks_emit_has_a_sentence():
    rules = emitted_rules()
    assert {"cell-count", "rrn", "identifier-value", "file-size", "file-type", "client-hash"} <= rules
    assert rules - set(texts.FINDINGS) == set()


def test_the_sentences_and_page_texts_are_in_korean():
    ko = i18n.Messages("ko")
    for table in (texts.FINDINGS, texts.NOT_DONE, texts.REFUSALS):
        for key, sentence in table.items():
            assert ko.gettext(sentence) != sentence, key
    assert ko.gettext(texts.FINDINGS["rrn"]) == "파일에 주민등록번호가 있습니다."
