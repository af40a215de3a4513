"""What an auditor checks: the audit chain and signed certificates."""
