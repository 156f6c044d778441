"""TaskService: verification tasks, their lifecycle and audit trail, on
PostgreSQL (SQLite in the embedded mode)."""
