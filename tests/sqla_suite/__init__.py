"""SQLAlchemy's own pool test suite run against autopool's pool classes (see run.py)."""
