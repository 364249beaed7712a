"""The catalogs: every message gpuhub writes for people has a Korean translation with the same placeholders,
the compiled .mo match their .po, refusals translate by rule id, and the request's language is chosen as
the issue says (the navbar choice, else Accept-Language, Korean first when it leads)."""

from __future__ import annotations

import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from gpuhub.core.site import load_site
from gpuhub.hub import i18n
from gpuhub.hub.form import form_context, render
from gpuhub.hub.i18n import Messages
from quota.policy import Rule

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "gpuhub/hub/locale"
SITE = load_site(ROOT / "examples/site.yaml")
FIELDS = re.compile(r"\{(\w+)[^{}]*\}|%\((\w+)\)s")


def catalog(lang: str):
    with open(LOCALE / lang / "LC_MESSAGES/gpuhub.po", "rb") as f:
        return read_po(f, locale=lang)


def fields(text: str) -> set[str]:
    return {a or b for a, b in FIELDS.findall(text)}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The messages in the code now (a fresh extraction with babel.cfg, as `make i18n` does)."""
    out = tmp_path_factory.mktemp("pot") / "messages.pot"
    pybabel = Path(sys.executable).with_name("pybabel")
    proc = subprocess.run(
        [str(pybabel), "extract", "-F", "babel.cfg", "-o", str(out), "."], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        return [m for m in read_po(f) if m.id]


def test_every_message_in_the_code_has_a_korean_translation_with_the_same_placeholders(extracted):
    ko = catalog("ko")
    missing, wrong = [], []
    for m in extracted:
        t = ko.get(m.id, context=m.context)
        if t is None or not t.string or t.fuzzy:
            missing.append((m.context, m.id))
        elif fields(t.string) != fields(m.id):
            wrong.append((m.context, m.id, t.string))
    assert not missing, f"no Korean translation (run `make i18n`, then fill msgstr in ko/gpuhub.po): {missing}"
    assert not wrong, f"Korean translation with other placeholders than the message: {wrong}"
    assert len(extracted) > 100


def test_every_admission_rule_is_catalogued_under_its_rule_id():
    ko = catalog("ko")
    for rule in Rule:
        t = ko.get(rule.template, context=rule.id)
        assert t is not None and t.string, f"rule {rule.id} has no Korean translation in ko/gpuhub.po; run make i18n"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_compiled_catalogs_are_those_of_the_po_files(lang):
    po = {(m.context, m.id): m.string for m in catalog(lang) if m.id and m.string}
    with open(LOCALE / lang / "LC_MESSAGES/gpuhub.mo", "rb") as f:
        mo = {(m.context, m.id): m.string for m in read_mo(f) if m.id}
    assert mo == po, f"{lang}/LC_MESSAGES/gpuhub.mo is stale; run `make i18n`"


FACTS = {
    Rule.BUDGET_EXHAUSTED: dict(org="gist-ai", used=100.0, budget=100, remaining=0.0, need=0.1),
    Rule.ORG_GPU_LIMIT: dict(org="gist-ai", held=2, limit=2, gpus=1),
    Rule.NO_FREE_DEVICE: dict(
        shortage="0 of 2 H100 GPUs are free and 1 were requested", alternative="choose another model", free="none"
    ),
    Rule.NO_ORGANIZATION: dict(
        user="mallory",
        why=", so GPU servers cannot be charged",
        fix="start with 0 GPUs, or ask an operator to add you to an organization",
    ),
    Rule.UNKNOWN_ORG: dict(org="nope", yours="(none)"),
}


@pytest.mark.parametrize("rule", list(FACTS), ids=lambda r: r.id)
def test_a_refusal_is_translated_by_rule_id_and_facts(rule):
    refusal = rule.refuse(**FACTS[rule])
    ko = Messages("ko").refusal(refusal.rule, refusal.message)
    assert ko != refusal.message and re.search("[가-힣]", ko), ko
    assert not re.search(r"\b(organization|requested|choose|GPUs are free)\b", ko), ko  # no English left
    assert Messages("en").refusal(refusal.rule, refusal.message) == refusal.message


def test_the_korean_refusal_sentences():
    r = Rule.BUDGET_EXHAUSTED.refuse(**FACTS[Rule.BUDGET_EXHAUSTED])
    assert (
        Messages("ko")
        .refusal(r.rule, r.message)
        .startswith("조직 gist-ai은(는) 이번 달 가중 GPU시간 100 중 100.00을(를) 사용했습니다(0.00 남음;")
    )
    r = Rule.NO_FREE_DEVICE.refuse(**FACTS[Rule.NO_FREE_DEVICE])
    assert Messages("ko").refusal(r.rule, r.message) == (
        "H100 GPU 2개 중 0개가 비어 있는데 1개를 요청했습니다; 나중에 다시 시도하거나 다른 모델을 선택하세요 "
        "(지금 비어 있음: 없음)"
    )
    error = f"HTTP 429: org-gpu-limit ({Rule.ORG_GPU_LIMIT.refuse(**FACTS[Rule.ORG_GPU_LIMIT]).message})"
    assert Messages("ko").error(error) == (
        "org-gpu-limit: 조직 gist-ai은(는) GPU 2개 중 2개를 사용 중이며 1개를 더 요청했습니다; "
        "서버를 중지하거나 운영자에게 gpu_limit을 늘려 달라고 요청하세요"
    )
    # the form's error as JupyterHub renders it: the rule id is gone from the reason, the rule is found by its template
    error = f"HTTP 429: error ({Rule.ORG_GPU_LIMIT.refuse(**FACTS[Rule.ORG_GPU_LIMIT]).message})"
    assert Messages("ko").error(error).startswith("org-gpu-limit: 조직 gist-ai은(는) GPU 2개 중 2개를 사용 중")
    assert Messages("en").error(error).startswith("org-gpu-limit: organization gist-ai has 2 of 2 GPUs in use")
    assert Messages("ko").error("HTTP 500: Internal Server Error (boom)") == "HTTP 500: Internal Server Error (boom)"
    assert Messages("ko").error("Spawn failed: timeout") == "Spawn failed: timeout"


@pytest.mark.parametrize("rule", list(Rule), ids=lambda r: r.id)
def test_each_rule_is_found_again_from_its_sentence(rule):
    facts = {name: f"x{i}" for i, (_, name, _, _) in enumerate(string.Formatter().parse(rule.template)) if name}
    plain = i18n._plain(rule.template).format(**facts)
    assert i18n.rule_of(plain) is rule


@pytest.mark.parametrize(
    "header, lang",
    [
        ("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7", "ko"),
        ("en-US,en;q=0.9,ko;q=0.8", "en"),
        ("fr-FR,ko;q=0.5", "ko"),
        ("ko;q=0.4,en;q=0.6", "en"),
        ("fr", "en"),
        ("", "en"),
        (None, "en"),
        ("ko;q=0", "en"),
        ("ko_KR", "ko"),
    ],
)
def test_accept_language_picks_the_first_catalog_it_accepts(header, lang):
    assert i18n.negotiate(header) == lang


class _Request:
    def __init__(self, headers):
        self.headers = headers


class _Handler:
    def __init__(self, cookie=None, accept=None):
        self.cookie, self.request = cookie, _Request({"Accept-Language": accept} if accept else {})

    def get_cookie(self, name):
        return self.cookie if name == i18n.COOKIE else None


def test_the_navbar_choice_wins_over_the_browser():
    assert i18n.request_locale(_Handler("en", "ko-KR")) == "en"
    assert i18n.request_locale(_Handler("ko", "en-US")) == "ko"
    assert i18n.request_locale(_Handler("xx", "ko-KR")) == "ko"  # an unknown cookie value is ignored
    assert i18n.request_locale(None) == "en"


def test_progress_messages_in_korean():
    ko = Messages("ko")
    assert i18n.progress_text(ko, "Allocating 1 GPU for gist-ai") == "gist-ai에 GPU 1개를 할당하는 중"
    assert i18n.progress_text(ko, "Allocating 0 GPUs for no organization") == "조직 없음에 GPU 0개를 할당하는 중"
    assert i18n.progress_text(ko, "Server is ready") == "서버가 준비되었습니다"
    assert i18n.progress_text(ko, "something else") == "something else"
    assert i18n.progress_text(Messages("en"), "Allocating 1 GPU for gist-ai") == "Allocating 1 GPU for gist-ai"
    assert i18n.progress_for(_Handler(None, "ko-KR"), "Server is ready") == "서버가 준비되었습니다"
    assert i18n.progress_for(None, "Server is ready") == "Server is ready"


def test_numbers_and_months_in_the_locale():
    assert Messages("ko").number(1234.5) == "1,234.5" and Messages("en").number(100, None) == "100"
    assert Messages("ko").month("2026-12") == "2026년 12월" and Messages("en").month("2026-12") == "Dec 2026"


def test_the_spawn_form_in_korean_and_in_english():
    status = {"orgs": {"gist-ai": {"used_gpu_hours": 100.0, "gpus_in_use": 0}}, "devices": []}
    ctx = form_context(SITE, status, "alice")
    ko, en = render(ctx, Messages("ko")), render(ctx, Messages("en"))
    assert "비용을 청구할 조직" in ko and "사용 중인 GPU 0 / 2" in ko and "GPU 개수" in ko
    assert "이번 달 가중 GPU시간 100 중 100.00을(를) 사용했습니다" in ko  # the spent budget's refusal
    assert 'data-gpuhub-rule="budget-exhausted"' in ko and 'lang="ko"' in ko
    assert "Organization to charge" in en and "GPUs in use 0 / 2" in en and "budget used 100.0 / 100 GPU-hours" in en
    assert "Organization to charge" not in ko


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_babel_finds_no_error_in_the_catalogs(lang):
    errors = [(m.id, [str(e) for e in errs]) for m, errs in catalog(lang).check()]
    assert not errors, f"{lang}/LC_MESSAGES/gpuhub.po: {errors}"


def test_the_hub_config_registers_the_pages_and_the_language():
    from traitlets.config import Config

    from gpuhub.hub import hubconfig
    from tests.unit.test_hubconfig import FACTS

    c = Config()
    hubconfig.apply_hub(c, SITE, FACTS)
    routes = {h[0]: h[1].__name__ for h in c.JupyterHub.extra_handlers}
    assert routes == {
        r"/language": "LanguageHandler",
        r"/usage": "UsageHandler",
        r"/operators": "OperatorsHandler",
        r"/operators/statement\.csv": "StatementCSVHandler",
    }
    assert all(h[2] == {"site_path": str(SITE.path)} for h in c.JupyterHub.extra_handlers)
    assert "gpuhub_i18n" in c.JupyterHub.template_vars and "gpuhub_quota" in c.JupyterHub.template_vars
