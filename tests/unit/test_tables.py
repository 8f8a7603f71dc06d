from gatekeeper.core.tables import format_table


def test_columns_line_up_under_a_rule_and_the_last_column_is_free_text() -> None:
    table = format_table(("code", "reason", "chg_rea"), [("D1", "SUSPENDED", "记分达到 9 分"), ("D10", "OK", "")])
    assert table.split("\n") == [
        "code  reason     chg_rea",
        "------------------------",
        "D1    SUSPENDED  记分达到 9 分",
        "D10   OK",
    ]
