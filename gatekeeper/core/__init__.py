"""The pure decision core: rules, records, policy, code formats and CST time. No I/O, no clock."""
