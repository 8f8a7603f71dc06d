"""Operations: metrics, logs, background task handling."""
