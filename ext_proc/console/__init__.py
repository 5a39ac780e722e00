"""The auditor's console: a read-only web view of the audit evidence (`ledgergate console`)."""
