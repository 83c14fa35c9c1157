"""Accounting: revenue recognition, its report and accuracy, and reconciliation of the
processor's settlements with payments and invoices."""
