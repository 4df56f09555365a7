"""The ticket domain: tickets, lifecycle, taxonomy, SLA clock, dispatch, audit, store, bus."""
