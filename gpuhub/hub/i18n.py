"""The language of what gpuhub writes for people: catalogs, the locale of a request, numbers and dates.

Catalogs are gettext ``.po`` files under ``gpuhub/hub/locale/<lang>/LC_MESSAGES/gpuhub.po`` (``ko`` and
``en``), compiled to ``.mo`` next to them and both kept in the repository; ``make i18n`` extracts the
messages (``babel.cfg``: Python, the Jinja templates, and the admission rules' templates through
:func:`extract_rules`), updates the ``.po`` files and compiles them. The CLI, logs and the REST answer stay
English; only pages and messages for people are translated here.

The locale of a request (:func:`request_locale`): the language the person chose with the navbar switch (the
``gpuhub-lang`` cookie, one per browser, kept a year), else the first of ``Accept-Language`` (by q, in order)
that gpuhub has a catalog for, else English. So ``ko-KR,ko;q=0.9,en;q=0.8`` gets Korean.

Refusals: :mod:`quota.policy` keeps its English templates (the core knows no languages). A refusal shown to a
person is translated here by its rule id and its facts (:func:`refusal_text`): the facts are read back out of
the English sentence with the rule's own template, and put into the template's translation (msgctxt = the
rule id). The REST answer keeps the English sentence and the ``X-Gpuhub-Rule`` id.
"""

from __future__ import annotations

import re
import string
from datetime import datetime, tzinfo
from functools import lru_cache
from pathlib import Path

from babel import Locale, dates, numbers
from babel.support import NullTranslations, Translations

from quota.policy import Rule

DOMAIN = "gpuhub"
LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("ko", "en")  # the catalogs; the first one a request accepts wins
DEFAULT = "en"
COOKIE = "gpuhub-lang"
NAMES = {"ko": "한국어", "en": "English"}  # each language in itself, for the switch
LAB_LOCALES = {"ko": "ko_KR", "en": "en"}  # JupyterLab's language-pack locale per language


def N_(message: str) -> str:  # noqa: N802 (gettext's name for "mark for extraction, translate later")
    return message


@lru_cache(maxsize=len(LANGUAGES))
def translations(lang: str) -> NullTranslations:
    """The compiled catalog of ``lang`` (English text when there is none)."""
    return Translations.load(str(LOCALE_DIR), [lang], domain=DOMAIN)


def negotiate(accept_language: str | None) -> str:
    """The catalog language an ``Accept-Language`` header asks for first (``DEFAULT`` when none fits)."""
    wanted = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        m = re.search(r"q\s*=\s*([0-9.]+)", params)
        if m:
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        lang = tag.strip().lower().split("-")[0].split("_")[0]
        if lang in LANGUAGES and q > 0:
            wanted.append((-q, i, lang))
    return min(wanted)[2] if wanted else DEFAULT


def request_locale(handler) -> str:
    """The language for a tornado request: the navbar choice (cookie), else ``Accept-Language``."""
    if handler is None:
        return DEFAULT
    chosen = handler.get_cookie(COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return negotiate(handler.request.headers.get("Accept-Language"))


class Messages:
    """gettext for one language, plus numbers and dates formatted for it (times in the site's zone)."""

    def __init__(self, lang: str = DEFAULT, tz: tzinfo | None = None):
        self.lang = lang if lang in LANGUAGES else DEFAULT
        self.tz = tz
        self.locale = Locale.parse(self.lang)
        self.names = NAMES
        self._t = translations(self.lang)

    @property
    def lab_locale(self) -> str:
        return LAB_LOCALES[self.lang]

    def gettext(self, message: str) -> str:
        return self._t.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self._t.ngettext(singular, plural, n)

    def pgettext(self, context: str, message: str) -> str:
        return self._t.pgettext(context, message)

    def number(self, value: float, digits: int | None = 1) -> str:
        """``value`` with ``digits`` decimals (None: as few as it needs) and the locale's separators (1,234.5)."""
        if digits is None:
            return numbers.format_decimal(value, locale=self.locale)
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return numbers.format_decimal(value, format=pattern, locale=self.locale)

    def percent(self, fraction: float) -> str:
        return numbers.format_percent(fraction, locale=self.locale)

    def datetime(self, instant: datetime | str) -> str:
        """A moment in the site's time zone, as the locale writes it (2026. 12. 2. 오후 3:04)."""
        if isinstance(instant, str):
            instant = datetime.fromisoformat(instant)
        return dates.format_datetime(instant, "medium", tzinfo=self.tz, locale=self.locale)

    def date(self, day) -> str:
        return dates.format_date(day, "medium", locale=self.locale)

    def month(self, period: str) -> str:
        """A ``YYYY-MM`` period as the locale names a month (2026년 12월, Dec 2026)."""
        year, month = (int(x) for x in period.split("-"))
        return dates.format_skeleton("yMMM", datetime(year, month, 1), locale=self.locale)

    def duration(self, seconds: float) -> str:
        """How long, roughly (3 hours, 5분)."""
        return dates.format_timedelta(seconds, threshold=1.5, locale=self.locale)

    def refusal(self, rule: str | Rule, message: str) -> str:
        return refusal_text(self, rule, message)

    def error(self, message: str | None) -> str | None:
        return error_text(self, message)


# --------------------------------------------------------------------------------------------- refusals

# Phrases that quota.policy fills into its templates (``why``, ``fix``, ``alternative``, empty lists).
PHRASES = (
    N_(", so GPU servers cannot be charged"),
    N_("start with 0 GPUs, or ask an operator to add you to an organization"),
    N_(" and this site allows no servers without one (hub.allow_cpu_without_org is false)"),
    N_("ask an operator to add you to an organization"),
    N_("choose another model"),
    N_("request fewer GPUs"),
    N_("(none)"),
    N_("none"),
)
# Phrases with numbers in them: (English pattern, message id with the same named fields).
SHORTAGES = (
    (
        re.compile(r"(?P<free>\d+) of (?P<total>\d+) (?P<model>.+) GPUs are free and (?P<gpus>\d+) were requested"),
        N_("{free} of {total} {model} GPUs are free and {gpus} were requested"),
    ),
    (
        re.compile(r"no GPU model has (?P<gpus>\d+) free devices \((?P<held>\d+) of (?P<total>\d+) GPUs in use\)"),
        N_("no GPU model has {gpus} free devices ({held} of {total} GPUs in use)"),
    ),
)


@lru_cache(maxsize=64)
def _pattern(template: str) -> re.Pattern:
    """A regular expression that reads the facts back out of a sentence made from ``template``."""
    out, names = [], set()
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if field is not None:
            out.append(f"(?P={field})" if field in names else f"(?P<{field}>.*?)")
            names.add(field)
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _plain(template: str) -> str:
    """``template`` with conversions and format specs dropped: the facts are already text."""
    return re.sub(r"\{(\w+)(![rsa])?(:[^{}]*)?\}", r"{\1}", template)


def facts_of(rule: Rule, message: str) -> dict[str, str] | None:
    """The facts ``rule``'s template was filled with to make ``message`` (None when it was not made so)."""
    m = _pattern(rule.template).match(message)
    return m.groupdict() if m else None


def _phrase(msgs: Messages, text: str) -> str:
    if text in PHRASES:
        return msgs.gettext(text)
    for pattern, msgid in SHORTAGES:
        m = pattern.fullmatch(text)
        if m:
            return msgs.gettext(msgid).format(**m.groupdict())
    return text


def refusal_text(msgs: Messages, rule: str | Rule, message: str) -> str:
    """``message`` (a refusal of ``rule``, in English) in ``msgs``' language; unchanged if it cannot be read."""
    try:
        spec = rule if isinstance(rule, Rule) else Rule.of(rule)
    except ValueError:
        return message
    facts = facts_of(spec, message)
    translated = msgs.pgettext(spec.id, spec.template)
    if facts is None or translated == spec.template and msgs.lang == DEFAULT:
        return message
    return _plain(translated).format(**{k: _phrase(msgs, v) for k, v in facts.items()})


_HTTP_ERROR = re.compile(r"(?:Spawn failed: )?HTTP (?P<status>\d{3}): (?P<reason>\S+) \((?P<message>.*)\)\Z", re.S)


def rule_of(message: str) -> Rule | None:
    """The rule whose template made ``message`` (JupyterHub drops the rule id from a spawn's error)."""
    return next((rule for rule in Rule if facts_of(rule, message) is not None), None)


def error_text(msgs: Messages, error: str | None) -> str | None:
    """A spawn error as JupyterHub shows it (``HTTP 429: error (organization …)``), translated when it is a
    refusal, with its rule id in front so people can quote it; any other error unchanged."""
    if not error:
        return error
    m = _HTTP_ERROR.match(error)
    if not m:
        return error
    try:
        rule = Rule.of(m.group("reason"))
    except ValueError:
        rule = rule_of(m.group("message"))
    if rule is None:
        return error
    return f"{rule.id}: {refusal_text(msgs, rule, m.group('message'))}"


# --------------------------------------------------------------------------------------- spawn progress

# Spawn progress as gpuhub.hub.spawner writes it (English) -> the message id to show.
PROGRESS = tuple(
    (re.compile(p), msgid)
    for p, msgid in (
        (r"Server requested", N_("Server requested")),  # JupyterHub's own first event
        (r"Checking your request", N_("Checking your request")),
        (r"Allocating (?P<gpus>\d+) GPUs? for (?P<org>.+)", N_("Allocating {gpus} GPU(s) for {org}")),
        (r"Allocated (?P<model>\S+) (?P<devices>.+) to (?P<org>.+)", N_("Allocated {model} {devices} to {org}")),
        (
            r"Waiting for a start slot: (?P<queued>\d+) other server\(s\) queued, "
            r"servers start a few at a time so each is ready sooner",
            N_(
                "Waiting for a start slot: {queued} other server(s) queued, servers start a few at a time "
                "so each is ready sooner"
            ),
        ),
        (r"Creating and starting container from (?P<image>.+)", N_("Creating and starting container from {image}")),
        (r"Preparing your home folder", N_("Preparing your home folder")),
        (r"Preparing course files \((?P<courses>.+)\)", N_("Preparing course files ({courses})")),
        (
            r"Recorded your acceptance of the data use agreement of (?P<project>.+)",
            N_("Recorded your acceptance of the data use agreement of {project}"),
        ),
        (r"Closing the network of project (?P<project>.+)", N_("Closing the network of project {project}")),
        (
            r"organization (?P<org>\S+) has used (?P<used>[0-9.]+) of (?P<budget>[0-9.e+]+) weighted GPU-hours this "
            r"month \((?P<percent>\d+) %\); at 100 % GPU servers are stopped after a grace period",
            N_(
                "organization {org} has used {used} of {budget} weighted GPU-hours this month ({percent} %); "
                "at 100 %, GPU servers are stopped after a grace period"
            ),
        ),
        (r"Waiting for JupyterLab to answer", N_("Waiting for JupyterLab to answer")),
        (r"Server is ready", N_("Server is ready")),
    )
)


def progress_text(msgs: Messages, message: str) -> str:
    """A spawn progress message in ``msgs``' language (unchanged in English, the spawner's own words, and when it
    is not one gpuhub writes)."""
    if msgs.lang == DEFAULT:
        return message
    for pattern, msgid in PROGRESS:
        m = pattern.fullmatch(message)
        if m:
            facts = m.groupdict()
            if "org" in facts and facts["org"] == "no organization":
                facts["org"] = msgs.gettext(N_("no organization"))
            return msgs.gettext(msgid).format(**facts)
    return message


def progress_for(handler, message: str) -> str:
    """``message`` in the language of the request that started the spawn (``spawner.handler``; None: English)."""
    return progress_text(Messages(request_locale(handler)), message)


# ------------------------------------------------------------------------------------------ extraction


def extract_rules(fileobj, keywords, comment_tags, options):
    """Babel extractor (``babel.cfg``): every admission rule's template, with its rule id as context."""
    for rule in Rule:
        yield 0, "pgettext", (rule.id, rule.template), [f"admission rule {rule.id} (quota.policy)"]
