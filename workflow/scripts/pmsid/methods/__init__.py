"""The thesis's methods: PMAT (``pmat``), later MCRL and HDNAG."""
