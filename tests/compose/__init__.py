"""End-to-end suite against docker-compose.yml brought up for real (not in the default run)."""
