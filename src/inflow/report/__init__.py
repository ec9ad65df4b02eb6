"""Stage 6, report: tables, dashboards and image grids drawn from the results."""
