"""What the airlock pages say per automatic check and per page action, through the catalogs (:mod:`gpuhub.hub.i18n`).

:mod:`quota.disclosure` writes each finding's detail in English (the REST answer and the PIPA records keep it: a
stable fact with the value masked and its location). A steward reading the page in Korean needs to know what the
rule means before the fact, so the page shows one translated sentence per rule id (``FINDINGS``), then the English
detail as the fact. A rule without a sentence here (a new one in quota.disclosure) still shows its detail, and
tests/airlock/test_airlock_texts.py fails until it gets one.
"""

from __future__ import annotations

from gpuhub.hub.i18n import N_

# rule id (quota.disclosure.Finding.rule, quota.airlock_store) -> what a failed finding of it means
FINDINGS = {
    "file-type": N_("This type of file is not allowed through the airlock."),
    "file-content": N_("The file's contents do not match its type."),
    "acro-blocked-extension": N_("ACRO blocks this type: its text can carry individual data points."),
    "file-size": N_("The file is larger than the airlock allows."),
    "text-scan": N_("This content is not scanned for identifiers: look at it yourself."),
    "csv-rows": N_("The table has more rows than the airlock allows: aggregate it further."),
    "cell-count": N_("A count in the table is below the minimum cell count: suppress it or combine categories."),
    "dominance": N_("A few values dominate a column's total: publishing the total would disclose them."),
    "rrn": N_("A resident registration number is in the file."),
    "phone": N_("A phone number is in the file."),
    "email": N_("An e-mail address is in the file."),
    "identifier-value": N_("A value of a dataset column marked as an identifier is in the file."),
    "notebook-outputs": N_("The notebook has stored outputs: clear them and ask again."),
    "checks-error": N_("The automatic checks failed: review the file by hand and tell an operator."),
    "client-hash": N_("The client's file differs from the file in the volume: the volume's file is reviewed."),
}

# the alert heading when a page action is refused (the rule's sentence follows it)
NOT_DONE = {
    "review": N_("The review was not recorded."),
    "cancel": N_("The request was not cancelled."),
    "revoke": N_("The approval was not revoked."),
}

# what the page says first about a refused cancel / revoke / download (the English rule sentence and id follow)
REFUSALS = {
    "airlock-not-requester": N_("Only the person who asked for this request may do this."),
    "airlock-not-cancellable": N_("Only a request without a decision can be cancelled."),
    "airlock-not-revocable": N_("Only an approved request that was not released or downloaded yet can be revoked."),
    "airlock-not-releasable": N_("This file is not available: it was downloaded once already, or never approved."),
}
