"""Brand monitoring: query matching, windowed aggregates, alerts, author escalation, noise control, backtest."""
