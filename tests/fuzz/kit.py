"""What the schemathesis fuzzes of our HTTP APIs share: the hypothesis settings, sending a case with exactly one
Authorization header, and the tally of cases and 5xx that each test records (tests/faults/figures.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

FUZZ = settings(
    max_examples=120,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    database=None,
    suppress_health_check=list(HealthCheck),
)


def send(case, base_url: str, authorization: str | None):
    """Call ``case`` with ``authorization`` as its only Authorization header (None: no header at all); the header
    the case generated is dropped so each mode sends what it names."""
    headers = dict(case.headers or {})
    headers.pop("Authorization", None)
    if authorization is not None:
        headers["Authorization"] = authorization
    case.headers = headers
    return case.call(base_url=base_url, headers=headers, timeout=30)


class Tally:
    """Cases sent, responses >= 500 and the count per status code, for the figures and the report."""

    def __init__(self):
        self.cases, self.fivexx, self.by_status, self.by_operation = 0, 0, {}, {}

    def add(self, status: int, operation: str | None = None) -> None:
        self.cases += 1
        self.fivexx += status >= 500
        self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1
        if operation is not None:
            counts = self.by_operation.setdefault(operation, {})
            counts[str(status)] = counts.get(str(status), 0) + 1

    def figures(self) -> dict:
        found = {"cases": self.cases, "5xx": self.fivexx, "by_status": dict(sorted(self.by_status.items()))}
        return {**found, "by_operation": self.by_operation} if self.by_operation else found

    def line(self, what: str) -> str:
        return f"{what}: {self.cases} cases, {self.fivexx} responses >= 500, by status {self.figures()['by_status']}"


def malformed_header(auth: str | None) -> bool:
    """A header value that is not valid HTTP (a control character; tab, printable ASCII and 0x80-0xff are valid):
    the hub's proxy (node) answers 400 before any service sees it, so that 400 is not held against a document."""
    return auth is not None and any(not (ch == "\t" or 32 <= ord(ch) <= 126 or 128 <= ord(ch) <= 255) for ch in auth)
