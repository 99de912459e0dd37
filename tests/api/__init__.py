"""The gateway's routes (gateway/api/) against real servers: uploads, aggregations, events, session, auth."""
