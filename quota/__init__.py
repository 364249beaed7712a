"""GPU allocation, budgets and the usage ledger (pure cores in policy/periods/budget/reconcile,
database adapters in store/billing/db)."""
