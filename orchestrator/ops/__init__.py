"""Operations: logging and secret redaction, Sentry, Prometheus metrics, the health endpoint."""
