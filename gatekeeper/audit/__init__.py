"""The decision record: audit records, the spool, the writer and the export."""
