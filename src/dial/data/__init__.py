"""Source adapters into the canonical data model (sessions / messages / users).

`dial.data.ingest.run_ingest` is the stage; one module per source (`canonical`, `openai_format`,
`chitchat`, `esconv`), with the shared row model and checks in `records`.
"""
